"""facerco.train: the one training engine and the teacher job.

- ``job``: the one job setup of teacher and student (process group, resume check, config.yaml, builders, validator)
- ``engine``: the training loop shared by every job (resume, AMP, DDP, callbacks from ``utils.callbacks``)
- ``feed``: the engine's input pipeline (batch path, uint8 decode in workers, normalize and pin on the device)
- ``task``: the contract between a job and the engine
- ``teacher``: margin-softmax training of a backbone that records its route
- ``schedule``: per-iteration lr schedules (staged schedules: :class:`facerco.route.plan.StagedSchedule`)
- ``checkpoint``, ``sampler``, ``distributed``, ``precision``, ``runlog``, ``validation``: the engine's parts
"""
