"""facerco.losses: training objectives.

- ``margin``: SphereFace / ArcFace / CosFace margins in one formula
- ``partial_fc``: the margin-softmax classifier sharded over ranks, and ``build_head`` (the one head builder)
- ``distill``: embedding mimicking, logit KD and FitNets hints for students
"""
