"""What the relevance workbench keeps and computes, outside HTTP: judgments, last evaluations, list overlap.

The service's side (routes, the page and its assets) is :mod:`cascade.service.ui`;
these modules are shared with the CLI (``cascade eval`` saves its report with
:func:`cascade.ui.evals.save_last_eval`), so they import nothing of the service.
"""
