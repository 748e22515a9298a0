"""``cascade tune``: each stage's marginal gain with a confidence interval, settings chosen on training data only.

- :mod:`cascade.tuning.stats`: per-query nDCG@10, folds by query, paired bootstrap, Pareto front
- :mod:`cascade.tuning.space`: the grid (fusion variants; per stage on/off, depth, combine weights)
- :mod:`cascade.tuning.collect`: one pass of real searches, every score and cost the sweep re-orders
- :mod:`cascade.tuning.chain`: one setting over one query's scores, with the stage contract's arithmetic
- :mod:`cascade.tuning.sweep`: the matrix of settings x queries, the choice rule, verdicts by cross-validation
- :mod:`cascade.tuning.gate`: per-query early exit (score margin or a logistic gate) and its threshold
- :mod:`cascade.tuning.proposal`: the chosen setting as a new profile, checked and diffed
- :mod:`cascade.tuning.run`: all of it end to end; :mod:`cascade.tuning.report`: tables, Markdown, plot
- :mod:`cascade.tuning.labels`: which splits may be read, judgments files, click logs
"""
