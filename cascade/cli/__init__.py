"""The ``cascade`` command line (``cascade.cli:app``): index, search, eval, demo, serve, train, bench, config.

One module per command group; this one only builds the Typer app and
registers the commands, in the order ``cascade --help`` lists them:

- :mod:`cascade.cli.index`: ``index``
- :mod:`cascade.cli.search`: ``search``, ``eval``, ``demo``
- :mod:`cascade.cli.serve`: ``serve``
- :mod:`cascade.cli.config`: ``config check|show|discover``
- :mod:`cascade.cli.train`: ``features log``, ``train ltr|cross-encoder|eval-cross-encoder``
- :mod:`cascade.cli.models`: ``models export-onnx``
- :mod:`cascade.cli.experiments`: ``experiments list|report|consume|export-ubi|simulate|fidelity|peeking|bench-*``
- :mod:`cascade.cli.bench`: ``bench``, ``bench-combine|ltr|serve|overload|os-features|backends|microbatch|rerank-api``
- :mod:`cascade.cli.tune`: ``tune``; :mod:`cascade.cli.plan`: ``plan``, ``plan-check``
- :mod:`cascade.cli.learning`: ``train labels|embedder``, ``behavior consume|reset``
- :mod:`cascade.cli.bench_learning`: ``bench-click-labels|personal``
- :mod:`cascade.cli.common`: what they share (consoles, errors, progress, settings, configs, datasets)
"""

from __future__ import annotations

import typer

from cascade.cli import bench, bench_learning, index, learning, plan, search, serve, tune
from cascade.cli.config import config_app
from cascade.cli.experiments import experiments_app
from cascade.cli.models import models_app
from cascade.cli.train import features_app, train_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="cascade: BM25 + kNN candidates, fusion and re-ranking stages, declared per index.")

app.command()(index.index)
app.command()(search.search)
app.command("eval")(search.eval_cmd)
app.command()(search.demo)
app.command()(serve.serve)
app.add_typer(config_app, name="config")
app.add_typer(features_app, name="features")
learning.register(train_app, features_app)  # train labels|embedder, features log-impressions
app.add_typer(train_app, name="train")
app.add_typer(experiments_app, name="experiments")
app.command("bench")(bench.bench_cmd)
app.command("bench-combine")(bench.bench_combine)
app.command("bench-ltr")(bench.bench_ltr)
app.command("bench-serve")(bench.bench_serve)
app.command("bench-overload")(bench.bench_overload)
app.command("bench-llm")(bench.bench_llm)
app.command("bench-os-features")(bench.bench_os_features)
app.add_typer(models_app, name="models")
app.command("bench-backends")(bench.bench_backends_cmd)
app.command("bench-microbatch")(bench.bench_microbatch_cmd)
app.command("bench-rerank-api")(bench.bench_rerank_api)
app.command("tune")(tune.tune_cmd)
app.add_typer(learning.behavior_app, name="behavior")
app.command("bench-click-labels")(bench_learning.bench_click_labels)
app.command("bench-personal")(bench_learning.bench_personal)
app.command("plan")(plan.plan_cmd)
app.command("plan-check")(plan.plan_check_cmd)

__all__ = ["app"]
