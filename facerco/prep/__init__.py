"""facerco.prep: from raw photos to aligned, packed, cleaned face datasets.

Modules (import what you need; heavy optional dependencies load lazily):

* ``detectors`` -- one interface over dlib (HOG + shape predictor), insightface SCRFD/RetinaFace ONNX and
  landmarks files: ``create_detector(name, **options).detect(rgb) -> list[Face]``;
* ``align`` -- Umeyama similarity to the ArcFace template, ``warp_face``, the resumable ``align_tree`` job;
* ``stream`` -- the same for streams of encoded images (TSV rows, RecordIO records), in bounded batches;
* ``lfw`` / ``msceleb`` / ``realign`` / ``megaface`` -- dataset recipes behind the ``data_prep/`` scripts;
* ``clean`` -- clean/noise lists and near-duplicate removal (``facerco clean``);
* ``pack`` -- aligned folder -> insightface RecordIO (``facerco pack``).
"""
