"""facerco.data: reading and writing face datasets, and generating them.

- ``recordio``: dmlc RecordIO (``train.rec``/``train.idx``/``property``), read and written without mxnet
- ``datasets``: training/evaluation datasets over RecordIO folders and aligned image folders (keyed, batch-wise)
- ``transforms``: decoding and the standard train/eval transforms (uint8 path, normalize on the device)
- ``bins``: insightface verification ``.bin`` files (restricted unpickler)
- ``pairs``: LFW ``pairs.txt`` (View 2)
- ``lfw_split``: the seeded CPU-scale LFW split (train / validation / test identities)
- ``inspect``: counts, histogram and contact sheet of a dataset
- ``synthetic``, ``synthetic_identity``, ``synthetic_render``, ``synthetic_scene``: generated faces for the demo
  and the tests
"""
