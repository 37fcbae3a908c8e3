#!/usr/bin/env python3
"""A scikit-learn baseline for forewarn's ticket quality, on the same split, scored the same way.

What a practitioner would write for a maintenance data set in forewarn's CSV layout
(telemetry.csv, events.csv, devices.csv):

- features at every reading: rolling mean and standard deviation of each metric over a short
  window and a day-long window (in event time), the count of each error code over the last day,
  hours since the last replacement (maintenance or failure) of each component, the device's
  attributes (numbers as they are, categories one-hot);
- labels: the next event of the mode is a failure within the horizon (a maintenance first means
  the part was replaced: censored unless the horizon was covered), as `forewarn train` labels rows;
- one HistGradientBoostingClassifier per failure mode, on every labelled row (missing values
  handled by the trees, not filled; failures weighted up to balance the classes);
- the threshold chosen on 5-fold out-of-fold predictions, folds grouped by device (failing devices
  spread over the folds), for the best ticket F1 counted exactly as below; candidate thresholds
  are dense at the top of the score range, where the rare failures are;
- a ticket opens when the score crosses the threshold and is held until a maintenance or failure
  of the mode.

Tickets are scored with the definitions of `forewarn evaluate` (src/train/select.rs
`match_tickets`): a ticket is correct when a failure of its mode follows within the match window
(2 x horizon); a failure is due when the device was scored within the horizon before it, detected
when a ticket opened within the match window before it and after the previous failure; the lead
time is from the earliest such ticket; false tickets are counted per device-month of history.

Install:  python3 -m pip install scikit-learn pandas
Run:      bench/sklearn_baseline.py --train DIR --test DIR [--horizon 24] [--forewarn BIN]
          bench/sklearn_baseline.py --forewarn target/release/forewarn --seeds 1:2,3:4,5:6
The second form simulates realistic fleets (`forewarn simulate --profile realistic`), one seed to
train and another to test, and runs forewarn (train + evaluate, defaults) and the baseline on
each split; every figure is printed with its ratio forewarn / baseline.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedGroupKFold

HOUR = pd.Timedelta(hours=1)


def load(folder):
    tel = pd.read_csv(os.path.join(folder, "telemetry.csv"))
    tel["ts"] = pd.to_datetime(tel["ts"], utc=True, format="ISO8601")
    ev = pd.read_csv(os.path.join(folder, "events.csv"), dtype={"code": str})
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    dev_path = os.path.join(folder, "devices.csv")
    devs = pd.read_csv(dev_path) if os.path.exists(dev_path) else None
    tel = tel.sort_values(["device_id", "ts"], kind="stable").reset_index(drop=True)
    ev = ev.sort_values(["device_id", "ts"], kind="stable").reset_index(drop=True)
    return tel, ev, devs


def hours(a):
    """Datetime values as float hours since the epoch."""
    return a.astype("datetime64[ns, UTC]").astype("int64").to_numpy() / 3.6e12


def features(tel, ev, devs, metrics, codes, comps, short_h, long_h, attr_cols):
    parts = []
    for dev, g in tel.groupby("device_id", sort=True):
        g = g.set_index("ts")
        f = pd.DataFrame(index=g.index)
        for w in (short_h, long_h):
            r = g[metrics].rolling(f"{w}h")
            m, s = r.mean(), r.std()
            for c in metrics:
                f[f"{c}_mean{w}h"] = m[c]
                f[f"{c}_std{w}h"] = s[c]
        t = hours(g.index.to_series())
        e = ev[ev.device_id == dev]
        et = hours(e["ts"]) if len(e) else np.array([])
        for code in codes:
            sel = et[(e["kind"] == "error").to_numpy() & (e["code"] == code).to_numpy()]
            f[f"err_{code}_24h"] = np.searchsorted(sel, t, "right") - np.searchsorted(
                sel, t - 24.0, "right"
            )
        first = t[0] if len(t) else 0.0
        for comp in comps:
            sel = et[
                e["kind"].isin(["maintenance", "failure"]).to_numpy()
                & (e["code"] == comp).to_numpy()
            ]
            k = np.searchsorted(sel, t, "right")
            padded = np.concatenate([[first], sel])
            last = padded[k]
            f[f"since_{comp}_h"] = t - last
        f["device_id"] = dev
        parts.append(f.reset_index())
    x = pd.concat(parts, ignore_index=True)
    if devs is not None and attr_cols:
        a = devs.set_index("device_id")
        for col, kind, values in attr_cols:
            if kind == "num":
                x[f"attr_{col}"] = x["device_id"].map(a[col]).astype(float)
            else:
                for v in values:
                    x[f"attr_{col}={v}"] = (x["device_id"].map(a[col]).astype(str) == v).astype(
                        float
                    )
    return x


def attribute_columns(devs):
    out = []
    if devs is None:
        return out
    for col in devs.columns:
        if col == "device_id" or col in ("customer", "customer_id", "owner"):
            continue
        v = devs[col]
        if pd.api.types.is_numeric_dtype(v):
            out.append((col, "num", None))
        elif v.nunique() <= 10:
            out.append((col, "cat", sorted(v.astype(str).unique())))
    return out


def labels(x, ev, mode, horizon_h):
    """1 / 0 / NaN (censored), as forewarn's labels: the next event of the mode decides."""
    y = np.full(len(x), np.nan)
    end_by_dev = {}
    for dev, g in ev.groupby("device_id"):
        end_by_dev[dev] = hours(g["ts"]).max()
    for dev, idx in x.groupby("device_id").indices.items():
        t = hours(x["ts"].iloc[idx])
        end = max(t.max(), end_by_dev.get(dev, -np.inf))
        e = ev[(ev.device_id == dev) & (ev.code == mode) & ev.kind.isin(["failure", "maintenance"])]
        et = hours(e["ts"]) if len(e) else np.array([])
        is_fail = (e["kind"] == "failure").to_numpy() if len(e) else np.array([], bool)
        k = np.searchsorted(et, t, "left")
        for j, i in enumerate(idx):
            if k[j] < len(et) and is_fail[k[j]]:
                y[i] = 1.0 if et[k[j]] - t[j] <= horizon_h else 0.0
            else:
                until = et[k[j]] if k[j] < len(et) else end
                if until - t[j] > horizon_h:
                    y[i] = 0.0
    return y


def segments(t, ev_dev, mode):
    """Start index of each stretch of rows between events of the mode (a ticket is held within)."""
    e = ev_dev[(ev_dev.code == mode) & ev_dev.kind.isin(["failure", "maintenance"])]
    et = hours(e["ts"]) if len(e) else np.array([])
    # A row at ts sees the events strictly before ts (forewarn's replay of the policy).
    seg = np.searchsorted(et, t, "left")
    return seg


def openings(t, p, seg, th):
    """Opening time of the first scoring at or above `th` in each stretch between events."""
    hit = p >= th
    _, first = np.unique(seg[hit], return_index=True)
    return list(t[hit][first])


def match(opened, fails, scored, horizon_h, window_h):
    """forewarn's `match_tickets`: (tickets, correct, due, detected, leads)."""
    correct = sum(1 for o in opened if any(o <= f <= o + window_h for f in fails))
    due = det = 0
    leads = []
    prev = -np.inf
    scored = np.asarray(scored)
    for f in fails:
        if np.any((scored >= f - horizon_h) & (scored <= f)):
            due += 1
            cands = [o for o in opened if prev < o <= f and o >= f - window_h]
            if cands:
                det += 1
                leads.append(f - min(cands))
        prev = f
    return len(opened), correct, due, det, leads


class Tally:
    def __init__(self):
        self.tickets = self.correct = self.due = self.detected = 0
        self.leads = []

    def add(self, r):
        self.tickets += r[0]
        self.correct += r[1]
        self.due += r[2]
        self.detected += r[3]
        self.leads += r[4]

    def precision(self):
        return self.correct / self.tickets if self.tickets else None

    def recall(self):
        return self.detected / self.due if self.due else None

    def f1(self):
        p, r = self.precision(), self.recall()
        return 2 * p * r / (p + r) if p and r else 0.0


class Replay:
    """Per device, what the ticket replay of one mode needs: row indices, times, stretches, failures."""

    def __init__(self, x, ev, mode):
        self.devs = []
        for dev, idx in x.groupby("device_id").indices.items():
            t = hours(x["ts"].iloc[idx])
            e = ev[ev.device_id == dev]
            seg = segments(t, e, mode)
            fails = list(hours(e[(e.code == mode) & (e.kind == "failure")]["ts"])) if len(e) else []
            self.devs.append((dev, idx, t, seg, fails))

    def tally(self, p, th, horizon_h, window_h):
        out = Tally()
        for _, idx, t, seg, fails in self.devs:
            out.add(match(openings(t, p[idx], seg, th), fails, t, horizon_h, window_h))
        return out


def tally_for(x, p, ev, mode, th, horizon_h, window_h):
    return Replay(x, ev, mode).tally(p, th, horizon_h, window_h)


def fit(xm, y, seed):
    # scikit-learn's histogram gradient boosting: every row (no subsampling needed at this size),
    # missing values handled natively (no fill that the trees would mistake for a level), and the
    # rare class weighted up to balance, as a practitioner would for failures that are ~1 % of rows.
    clf = HistGradientBoostingClassifier(
        max_iter=100, learning_rate=0.1, max_leaf_nodes=31, min_samples_leaf=40,
        l2_regularization=1.0, class_weight="balanced", early_stopping=False, random_state=seed,
    )
    clf.fit(xm, y)
    return clf


def threshold_candidates(p):
    """Scores to try as thresholds: dense where the rare positives are (the top of the ranking)."""
    p = p[np.isfinite(p)]
    if not len(p):
        return []
    q = 1.0 - np.logspace(-5, np.log10(0.5), 240)
    return np.unique(np.quantile(p, np.clip(q, 0.0, 1.0)))


def baseline(train_dir, test_dir, horizon_h, window_h, tickets_out=None, seed=0, folds=5):
    tr_tel, tr_ev, tr_dev = load(train_dir)
    te_tel, te_ev, te_dev = load(test_dir)
    metrics = [c for c in tr_tel.columns if c not in ("device_id", "ts")]
    metrics = [c for c in metrics if tr_tel[c].nunique() > 1]
    codes = sorted(tr_ev[tr_ev.kind == "error"]["code"].unique())
    modes = sorted(tr_ev[tr_ev.kind == "failure"]["code"].unique())
    comps = sorted(tr_ev[tr_ev.kind.isin(["failure", "maintenance"])]["code"].unique())
    step_h = float(np.median(np.diff(hours(tr_tel["ts"].drop_duplicates().sort_values()))))
    # Short window: a few readings; long window: a day, or 24 readings on a slower cadence.
    short_h = max(3, int(round(3 * step_h)))
    long_h = max(24, int(round(24 * step_h)))
    attrs = attribute_columns(tr_dev)
    xtr = features(tr_tel, tr_ev, tr_dev, metrics, codes, comps, short_h, long_h, attrs)
    xte = features(te_tel, te_ev, te_dev, metrics, codes, comps, short_h, long_h, attrs)
    cols = [c for c in xtr.columns if c not in ("device_id", "ts")]
    Xtr = xtr[cols].to_numpy(dtype=float)
    Xte = xte[cols].to_numpy(dtype=float)
    groups = xtr["device_id"].to_numpy()
    total = Tally()
    per_mode = {}
    tickets = []
    for mode in modes:
        print(f"sklearn: mode {mode}", file=sys.stderr, flush=True)
        y = labels(xtr, tr_ev, mode, horizon_h)
        ok = ~np.isnan(y)
        if (y[ok] == 1).sum() == 0:
            continue
        fails_dev = set(tr_ev[(tr_ev.kind == "failure") & (tr_ev.code == mode)].device_id)
        strat = np.array([1 if g in fails_dev else 0 for g in groups])
        n_failing = len(fails_dev)
        k = max(2, min(folds, len(set(groups)), max(n_failing, 2)))
        oof = np.full(len(y), np.nan)
        skf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        for fi, (a, b) in enumerate(skf.split(Xtr, strat, groups)):
            a = a[ok[a]]
            if (y[a] == 1).sum() == 0 or (y[a] == 0).sum() == 0:
                continue
            oof[b] = fit(Xtr[a], y[a], seed + fi).predict_proba(Xtr[b])[:, 1]
        have = ~np.isnan(oof)
        cands = threshold_candidates(oof[have]) if have.any() else []
        best = (0.0, 0.5)
        xo = xtr[have].reset_index(drop=True)
        po = oof[have]
        replay = Replay(xo, tr_ev, mode)
        for th in cands:
            f1 = replay.tally(po, th, horizon_h, window_h).f1()
            if f1 > best[0] + 1e-12:
                best = (f1, th)
        th = best[1]
        clf = fit(Xtr[ok], y[ok], seed)
        p = clf.predict_proba(Xte)[:, 1]
        tm = tally_for(xte, p, te_ev, mode, th, horizon_h, window_h)
        per_mode[mode] = {
            "threshold": th,
            "oof_f1": best[0],
            "tickets": tm.tickets,
            "precision": tm.precision(),
            "recall": tm.recall(),
        }
        total.tickets += tm.tickets
        total.correct += tm.correct
        total.due += tm.due
        total.detected += tm.detected
        total.leads += tm.leads
        if tickets_out:
            for dev, idx in xte.groupby("device_id").indices.items():
                t = hours(xte["ts"].iloc[idx])
                seg = segments(t, te_ev[te_ev.device_id == dev], mode)
                for o in openings(t, p[idx], seg, th):
                    tickets.append({"device_id": dev, "failure_mode": mode, "opened_h": o})
    if tickets_out:
        with open(tickets_out, "w") as fh:
            for tk in tickets:
                fh.write(json.dumps(tk) + "\n")
    # Device-months as forewarn counts them: first reading or event to the last.
    months = 0.0
    for dev, g in te_tel.groupby("device_id"):
        e = te_ev[te_ev.device_id == dev]
        lo = min(hours(g["ts"]).min(), hours(e["ts"]).min() if len(e) else np.inf)
        hi = max(hours(g["ts"]).max(), hours(e["ts"]).max() if len(e) else -np.inf)
        months += max(hi - lo, 0.0) / (30 * 24)
    false = total.tickets - total.correct
    return {
        "tickets": total.tickets,
        "precision": total.precision(),
        "recall": total.recall(),
        "due": total.due,
        "detected": total.detected,
        "median_lead_h": float(np.median(total.leads)) if total.leads else None,
        "false_per_device_month": false / months if months else None,
        "modes": per_mode,
        "windows_h": [short_h, long_h],
    }


def run_forewarn(bin_, train_dir, test_dir, horizon_h, work):
    model = os.path.join(work, "forewarn.json")
    dev = lambda d: (["--devices", os.path.join(d, "devices.csv")]
                     if os.path.exists(os.path.join(d, "devices.csv")) else [])
    t0 = time.time()
    subprocess.run(
        [bin_, "train", "--telemetry", os.path.join(train_dir, "telemetry.csv"),
         "--events", os.path.join(train_dir, "events.csv"), *dev(train_dir),
         "--horizon", f"{horizon_h:g}h", "--out", model],
        check=True, stdout=subprocess.DEVNULL,
    )
    train_s = time.time() - t0
    out = subprocess.run(
        [bin_, "evaluate", "--model", model,
         "--telemetry", os.path.join(test_dir, "telemetry.csv"),
         "--events", os.path.join(test_dir, "events.csv"), *dev(test_dir)],
        check=True, capture_output=True, text=True,
    ).stdout
    s = json.loads(out.strip().splitlines()[-1])
    t = s["tickets"]
    r = {
        "tickets": t["opened"],
        "precision": t["precision"],
        "recall": t["recall"],
        "due": t["due_failures"],
        "detected": t["detected"],
        "median_lead_h": t["lead_time_hours"]["median"],
        "false_per_device_month": t["false_alarms_per_device_month"],
        "train_seconds": round(train_s, 1),
    }
    alerts = s.get("customer_alerts")
    if alerts:
        r["false_alerts_per_device_month"] = alerts.get("false_per_device_month")
    return r


def fmt(v):
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def report(name, fw, bl):
    print(f"\n## {name}")
    keys = ["tickets", "precision", "recall", "median_lead_h", "false_per_device_month"]
    print(f"{'':24} {'forewarn':>10} {'sklearn':>10} {'ratio':>7}")
    for k in keys:
        a = fw.get(k) if fw else None
        b = bl.get(k)
        print(f"{k:24} {fmt(a):>10} {fmt(b):>10} {ratio(a, b):>7}")
    if fw:
        for k in ("false_alerts_per_device_month", "train_seconds"):
            if k in fw:
                print(f"{k:24} {fmt(fw[k]):>10}")
    print("sklearn per mode:", json.dumps(bl["modes"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train")
    ap.add_argument("--test")
    ap.add_argument("--horizon", type=float, default=24.0, help="hours")
    ap.add_argument("--match-window", type=float, help="hours [default: 2 x horizon]")
    ap.add_argument("--forewarn", help="forewarn binary: also run forewarn on the same split")
    ap.add_argument("--seeds", help="simulate realistic fleets: TRAIN:TEST[,TRAIN:TEST...]")
    ap.add_argument("--tickets-out")
    ap.add_argument("--json", help="write every result here")
    a = ap.parse_args()
    window = a.match_window or 2 * a.horizon
    results = []
    splits = []
    tmp = tempfile.mkdtemp(prefix="fw-baseline-")
    if a.seeds:
        if not a.forewarn:
            sys.exit("--seeds needs --forewarn (it simulates the fleets)")
        for pair in a.seeds.split(","):
            tr, te = pair.split(":")
            dirs = []
            for s in (tr, te):
                d = os.path.join(tmp, f"seed{s}")
                if not os.path.exists(d):
                    subprocess.run([a.forewarn, "simulate", "--profile", "realistic", "--seed", s,
                                    "--out", d], check=True, stdout=subprocess.DEVNULL)
                dirs.append(d)
            splits.append((f"realistic fleet, train seed {tr}, test seed {te}", dirs[0], dirs[1]))
    elif a.train and a.test:
        splits.append((f"{a.train} -> {a.test}", a.train, a.test))
    else:
        sys.exit("give --train and --test, or --seeds with --forewarn")
    for name, tr, te in splits:
        t0 = time.time()
        bl = baseline(tr, te, a.horizon, window, a.tickets_out)
        bl["seconds"] = round(time.time() - t0, 1)
        fw = run_forewarn(a.forewarn, tr, te, a.horizon, tmp) if a.forewarn else None
        report(name, fw, bl)
        results.append({"split": name, "forewarn": fw, "sklearn": bl})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
