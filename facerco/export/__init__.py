"""facerco.export: deployment artefacts.

- ``onnx``: one self-contained ONNX file per backbone, checked against PyTorch
- ``quantize``: int8 post-training static quantization (QDQ, calibrated)
- ``card``: the model card written beside every export
- ``deploy``: export, check, measure, write the card, place the file (``facerco export onnx``)
- ``embeddings``: embeddings of a whole image source (``.npy`` + index CSV, or a MegaFace devkit tree)
"""
