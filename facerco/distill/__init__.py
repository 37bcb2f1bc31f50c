"""facerco.distill: the student side of RCO, one job per module.

- ``anchors``: where anchor targets come from (route points run online, or the anchor-feature cache)
- ``task``: the student task (arcface + mimic + KD + hint, congruence logging, the anchor at each step)
- ``gate``: the gate callback (skip an anchor whose val metric is below the student's)
- ``strategies``: the strategy registry (``distill.strategy`` name -> planner), used through ``planning``
- ``planning``: the anchor/stage plan of a config (`route plan`, `cache --config`, `distill`, `compare`)
- ``probe``: the GSS probe set and the probe outputs of route points and students
- ``builders``: the student config and backbone, and the teacher facts a task needs (the rest: ``facerco.train.job``)
- ``plots``: congruence read from ``log.jsonl``, summarised per stage, plotted
- ``job``: ``run_distill``, the `facerco distill` (= `facerco train student`) job (setup steps, engine, files a run
  leaves)
- ``compare``: baselines and RCO variants under one budget (`facerco compare`)

The package imports ``facerco.route`` and ``facerco.train``; neither imports it (the old ``facerco.train.student`` and
``facerco.train.compare`` re-exports are gone: import from here). Nothing is re-exported here, so that
`facerco --help` need not import the job: import from the modules.
"""
