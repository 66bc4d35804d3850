"""Write the pipeline notebooks in qtnb/pipelines/ from their parameter classes in qtnb.pipeline.

The parameters cell is generated from the schema (so the notebook's names, defaults and help cannot drift from what
`qtnb run` validates); the report cells are written here. Run after changing a parameter class:
    .venv/bin/python scripts/build_pipelines.py
"""
import hashlib, types, typing
from pathlib import Path
import nbformat
from qtnb.pipeline import PIPELINES

OUT = Path(__file__).resolve().parent.parent / "qtnb" / "pipelines"

def type_name(ann) -> str:
    o = typing.get_origin(ann)
    if o is typing.Literal: return type(typing.get_args(ann)[0]).__name__
    if o in (typing.Union, types.UnionType):
        names = [type_name(a) for a in typing.get_args(ann) if a is not type(None)]
        return names[0]   # papermill reads one type name; the schema holds the rest
    if o is not None: return o.__name__
    return getattr(ann, "__name__", str(ann))

def parameters_cell(cls) -> str:
    lines = [f"# Parameters of the {cls.pipeline} pipeline: `qtnb run {cls.pipeline} -p NAME VALUE` or papermill's -p."]
    from qtnb.pipeline import PipelineParams
    base = PipelineParams.model_fields
    fields = {**{k: f for k, f in cls.model_fields.items() if k not in base}, **{k: cls.model_fields[k] for k in base}}
    width = max(len(f"{k}: {type_name(f.annotation)} = {f.default!r}") for k, f in fields.items())
    for k, f in fields.items():
        choices = typing.get_args(f.annotation) if typing.get_origin(f.annotation) is typing.Literal else None
        desc = f.description + (f" One of: {', '.join(map(str, choices))}." if choices and len(choices) > 1 else "")
        lines.append(f"{f'{k}: {type_name(f.annotation)} = {f.default!r}':<{width}}  # {desc}")
    return "\n".join(lines)

SETUP = """from qtnb.pipeline import RENAMED, {cls}, {fn}, use_static_plotly
use_static_plotly()  # figures stay visible when this notebook is opened as static HTML
params = {cls}(**{{k: globals()[k] for k in [*{cls}.model_fields, *RENAMED] if k in globals()}})  # papermill -p epochs: the old name still works"""

# the train and backtest reports' significance section (one text for both)
SIGNIFICANCE = (
    "## Is it significant?\n\nOn the test range: `n` periods; directional accuracy with its standard error and binomial "
    "p-value against a coin; the probabilistic Sharpe ratio against 0 (`psr`, 0.95 or more is significant at 5%); and the "
    "Diebold-Mariano test of the model against the naive zero-return forecast (`dm_stat` < 0 with `dm_pvalue` < 0.05: "
    "the model's errors are significantly smaller).",
    "import pandas as pd\npd.Series({k: report.metrics['test'].get(k) for k in ('n', 'directional_accuracy', 'directional_accuracy_se', "
    "'directional_accuracy_pvalue', 'sharpe', 'psr', 'dm_stat', 'dm_pvalue')}, name='test').to_frame()")

# the train and backtest reports' regime section (one text for both): it shows the `by_regime` the pipeline computed
# (qtnb.metrics.by_regime) and wrote to metrics.json
REGIMES = (
    "## By market regime\n\nThe out-of-sample trades split by market regime, each prediction labelled with nothing fitted on "
    "the test range (per symbol on a panel): **trend** (1: close above its 200-day average, 0 below), **volatility** (0 calm to "
    "2 turbulent: 20-day volatility against its terciles on that fold's training rows) and **hmm** (a 2-state Gaussian HMM of "
    "returns fitted on that fold's training rows and filtered forward, never smoothed: 0 calm, 1 turbulent). A regime's "
    "figures are the strategy's own after-cost returns on the periods labelled with it (a panel: the symbols in it, per unit "
    "of their capital), on the convention printed above; `share` is its fraction of the predictions. The tables are "
    "metrics.json's `by_regime`, as the run wrote it.",
    "for kind, table in report.metrics['by_regime'].items():\n"
    "    display(pd.DataFrame(table).T.rename_axis(kind) if 'error' not in table else f\"{kind}: {table['error']}\")")

# the train and backtest reports' diagnostics (qtnb.report's figures, one text for both)
LEARNING = ("## Learning curves\n\nTraining and validation loss per epoch (one pair per fold), the best epoch (the weights kept) and "
    "the epoch early stopping ended the fit marked; next to it the validation Sharpe ratio, a trading figure rather than the loss "
    "again; the learning rate on a log axis, or only noted when it never changed. A model fitted in closed form (linear, "
    "XGBoost) has no epochs: its losses are shown as bars.", "report.plot_history()")
CLASSIFICATION = (
    "## Classification diagnostics\n\nFor a direction target: the confusion matrix of the test predictions (up when P(up) > 0.5), "
    "the ROC curve with its AUC, and the calibration curve (predicted P(up) against how often up came, in deciles).",
    "from qtnb.report import classification_figures\nd = report.predictions\n"
    "if 'logit_0' in d and 'logit_1' not in d:\n    for fig in classification_figures(d): fig.show()\n"
    "else: print(f'target {params.target!r}: no confusion matrix, ROC or calibration (they are drawn for a two-class direction target)')")
IMPORTANCE = (
    "## Permutation importance\n\nHow much the test loss worsens when one feature's values are shuffled (the run's "
    "feature_importance.csv; for walk-forward, the last fold's model). Small differences are noise.",
    "from qtnb.report import importance_figure\nimp = report.folds[-1].result.feature_importance\n"
    "importance_figure(imp) if imp is not None else print('no importance was computed (the trainer setting importance is off)')")
TRADING = (
    "## Trading diagnostics\n\nThe position held each period and the turnover it caused; the Sharpe ratio over a rolling quarter "
    "(63 periods); the compounded return of each month (percent); and the Sharpe ratio the same signal reaches at other costs "
    "per unit turnover (this run's cost dotted; where the curve crosses zero the edge is gone). A panel is traded as one portfolio.",
    "from qtnb.report import exposure_figure, rolling_sharpe_figure, monthly_returns_figure, cost_sensitivity, cost_sensitivity_figure\n"
    "bt = report.backtest()\nfor fig in (exposure_figure(bt), rolling_sharpe_figure(bt), monthly_returns_figure(bt)): fig.show()\n"
    "cost_sensitivity_figure(cost_sensitivity(report.backtest), cost_bps=report.cost_bps)")

REPORTS = {
"train": ("Train", "One model trained on one dataset, validated without look-ahead; the run's report.", [
    ("## Run", "report = train(params)"),
    ("## Data\n\nWhat was trained on, and how it was split (purged between ranges, so no target reaches into an evaluation range).",
     "report.data_summary()"),
    (None, "report.prepared.plot_splits()"),
    LEARNING,
    ("## Predictions against actual\n\nOut of sample: the test range (each fold's test range, stitched, for walk-forward).",
     "report.plot_predictions()"),
    CLASSIFICATION,
    ("## Metrics\n\nMetric names are qtnb.metrics'. For walk-forward, `test` is the stitched out-of-sample series and each fold's row its "
     "part of it, all in return space. `buy and hold` is holding the asset long over the same test dates (trading figures only).",
     "report.metrics_table()"),
    ("## Trading\n\nThe model's signal traded after costs, against buy-and-hold, on one-period returns (or non-overlapping "
     "horizon-long blocks when the trainer's `trade_hold` is 'blocks'): the next line says which.",
     "print(report.metrics['trading']['definition'])\nreport.plot_equity()"),
    TRADING,
    IMPORTANCE,
    SIGNIFICANCE,
    REGIMES,
    ("## Where it is", "print(report.summary())"),
]),
"backtest": ("Backtest", "Walk-forward training and a trading evaluation of the stitched out-of-sample predictions.", [
    ("## Run", "report = backtest(params)"),
    ("## Data and folds", "report.data_summary()"),
    (None, "report.prepared.plot_splits()"),
    ("## Per-fold metrics\n\nEach fold's model is scored on its own test range; `test` is all of them stitched. Every row is computed "
     "the same way from the out-of-sample predictions, in return space; `buy and hold` holds the asset over the same dates.",
     "report.metrics_table()"),
    ("## Sharpe per fold\n\nEach fold's test Sharpe ratio (the fold rows above): an edge that lives in one fold is more often luck "
     "than skill.", "from qtnb.report import fold_sharpe_figure\nfold_sharpe_figure(report.metrics['folds'])"),
    ("## Equity and drawdown against buy-and-hold\n\nAfter costs of `cost_bps` per unit turnover; dotted lines mark fold boundaries.",
     "report.plot_equity()"),
    ("## Trading metrics\n\nStrategy and buy-and-hold over the same dates and the same convention (printed first).",
     "import pandas as pd\nprint(report.metrics['backtest']['trading'])\npd.DataFrame({k: report.metrics['backtest'][k] for k in ('strategy', 'buy_hold')})"),
    TRADING,
    SIGNIFICANCE,
    REGIMES,
    ("## Per symbol\n\nA panel is traded as one portfolio; each symbol's own figures show which ones carry it (best Sharpe first).",
     "pd.DataFrame(report.metrics['backtest'].get('symbols', {})).T"),
    ("## Predictions against actual", "report.plot_predictions()"),
    CLASSIFICATION,
    LEARNING,
    IMPORTANCE,
    ("## Where it is", "print(report.summary())"),
]),
"tune": ("Tune", "An Optuna study over a search space; every trial is a run of its own, linked both ways.", [
    ("## Run\n\nA rerun with the same parameters continues the same study: finished trials are kept. The pipeline prints one line per\ntrial itself, so Optuna's own (colored) log lines are turned off.",
     "import optuna\noptuna.logging.set_verbosity(optuna.logging.WARNING)\nreport = tune(params)"),
    ("## Optimization history", "tuner = report.extra['tuner']\nfrom optuna import visualization as ov\nn_done = sum(t.state.name == 'COMPLETE' for t in tuner.study.trials)\ntarget = None if len(tuner.study.directions) == 1 else (lambda t: t.values[0])   # several objectives: the first\ntuner.plot('history')"),
    ("## Intermediate values\n\nThe objective after each epoch of each trial: what the pruner judged.", "tuner.plot('intermediate')"),
    ("## Slices\n\nEach parameter against the objective, one dot per finished trial (darker: later).", "ov.plot_slice(tuner.study, target=target)"),
    ("## Contours\n\nThe objective over pairs of parameters, interpolated between finished trials.", "ov.plot_contour(tuner.study, target=target) if n_done >= 2 else print(f'a contour needs 2 finished trials; this study has {n_done}')"),
    ("## Parallel coordinates", "ov.plot_parallel_coordinate(tuner.study, target=target)"),
    ("## Parameter importances\n\nEstimated from the finished trials; below 10 trials they are mostly noise, so they are not drawn.",
     "from qtnb.errors import TuningError\nif n_done < 10: fig = None; print(f'{n_done} finished trials: too few for parameter importances (10 or more)')\nelse:\n    print(f'estimated from {n_done} trials; treat small differences as noise')\n    try: fig = tuner.plot('importances')\n    except TuningError as e: fig = None; print(f'no importances yet ({e})')\nfig"),
    ("## Best trial", "import pandas as pd\nbest = report.metrics['study']\nprint(f\"trial {best['best_trial']} (run {best['best_run_id']}): {best['best_value']}\")\npd.Series(best['best_params'], name='best parameters').to_frame()"),
    (None, "from qtnb.runs import open_run\nfrom qtnb.report import learning_curves\nbest_run = open_run(best['best_run_id'], runs_dir=report.run_dir.parent)\nh = pd.read_csv(best_run.path / 'history.csv')\nearly = int(h['epoch'].max()) if str(best_run.status.get('stop_reason') or '').startswith('early stopping') else None\nlearning_curves(h, best_epoch=(best_run.metrics.get('fit') or {}).get('best_epoch'), stopped_epoch=early,\n                title=f\"Learning curves of the best trial ({best['best_trial']})\")"),
    ("## Is the best trial's Sharpe more than luck?\n\nThe deflated Sharpe ratio (Bailey and López de Prado) of the best trial, given how "
     "many trials were tried and how much their Sharpe ratios varied: `sr0` is the Sharpe the best of that many unskilled trials "
     "would reach; `p_value` < 0.05 says the best trial beats it.",
     "ds = report.metrics['study'].get('deflated_sharpe')\nprint('no trial recorded a Sharpe ratio (the objective split has no trading metrics)' if ds is None else "
     "pd.Series(ds, name='deflated Sharpe').to_string())"),
    ("## Trials\n\nEvery trial, pruned ones too; its run id links it to its run folder (history, checkpoints, metrics).",
     "cols = [c for c in report.extra['trials'].columns if c in ('number', 'state', 'duration', 'user_attrs_run_id') or c.startswith(('value', 'params_'))]\nreport.extra['trials'][cols]"),
    ("## Where it is", "print(report.summary())"),
]),
"export": ("Export", "A finished run's model exported, checked against PyTorch, and timed on every backend here.", [
    ("## Run", "report = export(params)"),
    ("## Parity\n\nThe exported model against PyTorch eager on the run's own test windows; for a stateful LSTM/GRU (its state "
     "as ONNX inputs and outputs) also over three consecutive chunks with the state carried (`chunks_max_abs_diff`).",
     "report.metrics['export']"),
    ("## Latency\n\nBatch-1 latency and batch-256 throughput, measured side by side in this process.", "report.extra['latency']"),
    (None, "report.extra['figure']"),
    ("## Where it is", "print(report.summary())"),
]),
}

def cell_id(name, i, src): return hashlib.sha1(f"{name}:{i}:{src}".encode()).hexdigest()[:8]

def build(name: str) -> Path:
    cls = PIPELINES[name]
    title, blurb, sections = REPORTS[name]
    cells = [nbformat.v4.new_markdown_cell(
        f"# {title}\n\n> {blurb}\n\nRun it with `qtnb run {name} -p NAME VALUE ...` (the run lands in `runs/<run_id>/`, "
        f"this notebook as `notebook.ipynb`), or with `papermill qtnb/pipelines/{name}.ipynb out.ipynb -p NAME VALUE`. "
        f"`papermill --help-notebook qtnb/pipelines/{name}.ipynb` lists the parameters.")]
    p = nbformat.v4.new_code_cell(parameters_cell(cls)); p.metadata["tags"] = ["parameters"]
    cells += [p, nbformat.v4.new_code_cell(SETUP.format(cls=cls.__name__, fn=name))]
    for md, src in sections:
        if md: cells.append(nbformat.v4.new_markdown_cell(md))
        cells.append(nbformat.v4.new_code_cell(src))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, c in enumerate(nb.cells): c.id = cell_id(name, i, c.source)
    out = OUT / f"{name}.ipynb"
    nbformat.write(nb, out)
    return out

if __name__ == "__main__":
    for n in PIPELINES: print(build(n))
