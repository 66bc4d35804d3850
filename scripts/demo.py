"""The demo behind the README's first command: the most complete end-to-end run qtnb can do today."""
import numpy as np
from qtnb.datasets import load_sp500, planted

df = load_sp500()
r = np.log(df["Close"]).diff().dropna().to_numpy()
print(f"S&P 500: {len(df):,} trading days, {df.index[0].date()} to {df.index[-1].date()}")
print(f"daily log return: mean {r.mean():+.5f}, std {r.std():.4f}, annualised Sharpe {r.mean() / r.std() * np.sqrt(252):.2f}")

def ar_holdout_r2(r, lags=5, split=0.8):
    "Fit next-day return on the last `lags` returns on the first 80%, score R^2 on the rest (no overlap)."
    X = np.column_stack([r[lags - 1 - i:len(r) - 1 - i] for i in range(lags)] + [np.ones(len(r) - lags)])
    y = r[lags:]
    n = int(len(y) * split)
    beta, *_ = np.linalg.lstsq(X[:n], y[:n], rcond=None)
    resid = y[n:] - X[n:] @ beta
    return 1 - resid.var() / y[n:].var()

print(f"AR(5) least squares, out-of-sample R^2 on S&P 500: {ar_holdout_r2(r):+.4f} (markets are hard)")
pl = planted(5031, seed=0)
rp = np.log(pl["Close"]).diff().dropna().to_numpy()
print(f"same fit on the planted-signal series: {ar_holdout_r2(rp):+.4f} (best achievable {pl.attrs['optimal_r2']:.4f})")
