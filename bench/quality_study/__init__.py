"""The quality study of ``bench/quality``: how much of the RealUID paper's case holds at CPU scale.

Modules: ``settings`` (every size and hyper-parameter, full and quick), ``tasks`` (data sets, held-out
and floor samples, user point files), ``toy`` (one teacher + two students per job, with distances and
convergence curves), ``digits`` (8x8 digits with the offline FID), ``stats`` (means, spreads, verdicts),
``figures`` and ``report`` (bench/results/RESULTS.md), ``cli`` (the command and its job scheduler).
"""
