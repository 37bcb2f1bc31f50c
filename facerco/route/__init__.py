"""facerco.route: the teacher's route, and what a student follows on it.

- ``record``: the engine callback that records route points while a teacher trains
- ``io``: reading ``route.json`` + ``route/<name>.safetensors`` (sha256 checked)
- ``anchors``: choosing anchors (EEIS, GSS, manual, final, best) and probe divergences
- ``strategies``: selection rules of lockstep, phase, early, ensemble, reverse and the online-GSS slots (planning)
- ``follow``: what the student follows during training: ``RouteFollower``, ``OnlineGSSCallback``, ensemble targets
- ``plan``: stage plans (which anchor at which step) and ``StagedSchedule``, the one staged lr schedule
- ``cache_format``, ``cache_fingerprint``, ``cache_writer``, ``cache_reader``, ``cache_anchors``: the anchor-feature
  cache (every anchor's embedding of every training image): its files, what it was built from, ``build_cache``,
  ``AnchorCache``, and which route points it holds
- ``views_cache``: augmented views (student crops + the teacher's rows of each), written by ``cache_writer``

``route`` never imports ``train`` or ``distill``: the student side lives in :mod:`facerco.distill`.
"""
