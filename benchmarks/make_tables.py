"""Write benchmarks/README.md from the JSON files in benchmarks/results/ (never edit the tables by hand).

Usage: python benchmarks/make_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

INTRO = """# Benchmarks

Each script reproduces a comparison on real data (`../shared/data`) and writes JSON to `results/` with the
exact command, git commit, package versions, machine and seed. This page is generated from those files by
`python benchmarks/make_tables.py`; the numbers below are copied from them, not typed.
"""


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def frac(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def in_benchmarks(path: str) -> str:
    """A result's file path relative to benchmarks/ (results written from a worktree or with --out record
    absolute paths)."""
    parts = Path(path).parts
    return str(Path(*parts[len(parts) - parts[::-1].index("benchmarks"):])) if "benchmarks" in parts else path


def provenance(r: dict) -> str:
    m = r["machine"]
    when = "" if "commit_at_finish" in r else " (read when the run finished; older scripts recorded HEAD then)"
    return (f"- command: `{r['command']}`\n- commit: `{r['commit']}`{when}, seed {r['seed']}\n"
            f"- machine: {m.get('cpu_count')} CPU cores, torch threads {m.get('torch_threads')}, {m.get('device')}, "
            f"torch {r['versions'].get('torch')}, transformers {r['versions'].get('transformers')}\n")


def foundation(r: dict) -> str:
    t = r["teacher"]
    lines = [f"## Foundation: SST-2 teacher and distilled students (`{Path(r['command'].split()[1]).name}`)\n",
             provenance(r),
             f"- training rows: {r['train_subset']} of {r['train_rows_total']}; epochs: {json.dumps(r['epochs'])}; "
             f"evaluation: {r['eval_split']}\n",
             "| model | dev accuracy (%) | labels-only (%) | KD − labels-only (points) | FLOPs/example | cost fraction | params (M) | train time (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| teacher: all-MiniLM-L6-v2 fine-tuned | {pct(t['dev_accuracy'])} | - | - | {t['flops_per_example']:.3g} | "
             f"1.000 | {t['params'] / 1e6:.2f} | {t['train_seconds'] / 60:.1f} |"]
    for s in r["students"]:
        kd, lab = s["kd"], s["labels_only"]
        lines.append(f"| {s['name']} (KD) | {pct(s['kd_dev_accuracy'])} | {pct(s['labels_only_dev_accuracy'])} | "
                     f"{100 * s['kd_minus_labels_only']:+.2f} | {kd['flops_per_example']:.3g} | "
                     f"{s['cost_fraction']:.3g} | {kd['params'] / 1e6:.2f} | "
                     f"{kd['train_seconds'] / 60:.1f} (labels-only {lab['train_seconds'] / 60:.1f}) |")
    lines.append(f"\nTeacher logits for the training rows were computed once in "
                 f"{r['teacher_logits_seconds'] / 60:.1f} min and shared by both KD students.\n")
    return "\n".join(lines)


def early_exit(r: dict) -> str:
    lines = [f"## Early exit: {r['benchmark'].removeprefix('early_exit_')} (`{Path(r['command'].split()[1]).name}`)\n",
             provenance(r),
             f"- {r['model']}; training rows: {r.get('train_rows', r['train_subset'])}, {r['epochs']} epoch; evaluation data: "
             f"{r['eval_data']} ({r['eval_rows']} rows), {r['halvings']} random halvings (calibrate on one half, "
             "report the other)\n",
             "| schedule | full accuracy (%) | cost at ≤1 pt drop | drop there (points) | share of halvings within 1 pt | "
             "oracle (earliest agreeing) | oracle (earliest correct) | area to agreeing oracle | train time (min) | "
             "vs the teacher: cost / drop (points) / share within 1 pt |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in r["schedules"].items():
        m = s["summary"]
        mark = " (winner)" if name == r["winner"] else ""
        t = s.get("vs_teacher")
        vs = "-" if t is None or t["cost"] is None else \
            f"{frac(t['cost'])} / {t['drop_points']:.2f} / {t['share_within_1pt']:.2f}"
        lines.append(f"| {name}{mark} | {pct(m['full_accuracy'])} | {frac(m['reference']['cost'])} | "
                     f"{100 * m['reference']['drop']:.2f} | {frac(m['reference']['share_within_1pt'], 2)} | "
                     f"{frac(m['oracle_agree_cost_at_drop_1pt'])} | {frac(m['oracle_correct_cost_at_drop_1pt'])} | "
                     f"{m['area_to_oracle_agree']:.4f} | {s['train_seconds'] / 60:.1f} | {vs} |")
    if any("vs_teacher" in s for s in r["schedules"].values()):
        lines += ["", "Cost at ≤1 pt drop is against each schedule's own last exit (agreement on the calibration "
                  "half). The last column is against the fine-tuned teacher (two_stage's frozen last exit), whose "
                  "accuracy joint training can fall below: the cheapest threshold whose gold accuracy on the "
                  "calibration rows is within 1 point of the teacher's, then its cost, its drop below the teacher "
                  "on the report half and the share of halvings within 1 point there (gold accuracy on a few "
                  "hundred rows is noisy, so this rule overshoots)."]
    g = r["guarantee"]
    sp = r["speedup"]
    lines += policies_table(r)
    lines += ["", f"Guaranteed mode (Learn-then-Test, ε = {g['epsilon']}, δ = {g['delta']}) over {g['splits']} "
              f"splits: violation rate {g['violation_rate']:.3f} (disagreement > ε on the report half; accuracy-drop "
              f"violations {g['accuracy_drop_violation_rate']:.3f}), mean cost {g['mean_cost']:.3f} against "
              f"{r['cost_at_drop_1pt']:.3f} without the guarantee." + learned_guarantee(r), "",
              f"Speed-up on {r.get('speedup_rows', 'the report half of the')} evaluation rows at the winner's "
              "default threshold. FLOPs speed-up counts each row's FLOPs by its length (longer inputs tend to go "
              "deeper); the length-blind figure (every row as the average one) has its own column. Times are the "
              "model's alone (featurized inputs); the last two columns time both sides from the texts, tokenisation "
              "included.", "", *speedup_table(sp)]
    plots = r.get("plots", {})
    if plots:
        lines += ["", " ".join(f"![{k}]({in_benchmarks(v)})" for k, v in plots.items())]
    return "\n".join(lines) + "\n"


def speedup_table(sp: dict) -> list[str]:
    lines = ["| batch size | full model (s) | adaptive (s) | measured speed-up | FLOPs speed-up | measured / FLOPs | "
             "measured / length-blind FLOPs | with tokenisation: speed-up | with tokenisation: measured / FLOPs |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for bs, s in sp.items():
        blind = s.get("realised_over_theoretical_uniform")
        lines.append(f"| {bs} | {s['full_seconds']:.2f} | {s['adaptive_seconds']:.2f} | {s['realised']:.2f} | "
                     f"{s['theoretical']:.2f} | {s['realised_over_theoretical']:.2f} | {frac(blind, 2)} | "
                     f"{frac(s.get('realised_with_tokenisation'), 2)} | "
                     f"{frac(s.get('realised_over_theoretical_with_tokenisation'), 2)} |")
    return lines


def policies_table(r: dict) -> list[str]:
    """Every exit score on the winner at the same halvings (absent from older result files)."""
    pol = r.get("policies")
    if not pol:
        return []
    lines = ["", f"Exit scores on the winner (`{r['winner']}`), same halvings:", "",
             "| exit score | cost at ≤1 pt drop | drop there (points) | share of halvings within 1 pt | "
             "guaranteed-mode cost |", "|---|---:|---:|---:|---:|"]
    for name, p in pol.items():
        lines.append(f"| {name} | {frac(p['cost_at_drop_1pt'])} | {p['drop_points']:.2f} | "
                     f"{frac(p['share_within_1pt'], 2)} | {frac(p.get('guaranteed_cost'))} |")
    return lines


def learned_guarantee(r: dict) -> str:
    g = r.get("guarantee_learned")
    if not g:
        return ""
    return (f" With the learned exit score: violation rate {g['violation_rate']:.3f} over {g['splits']} splits, "
            f"mean cost {g['mean_cost']:.3f}.")


def models_of(models: str | dict) -> str:
    """int8's model description: a sentence (older files) or each model's training data, rows and epochs."""
    if isinstance(models, str):
        return models
    return "; ".join(f"{name}: trained on {m['train_rows']} rows of {Path(m['train_data']).parent.name}, "
                     f"{m['epochs']} epoch(s)" for name, m in models.items())


def cascade(r: dict) -> str:
    lines = [f"## Cascade: {r['benchmark'].removeprefix('cascade_')} (`{Path(r['command'].split()[1]).name}`)\n",
             provenance(r),
             f"- teacher: {r['teacher']}\n- training rows: {r['train_subset']}; evaluation: {r['eval_data']} "
             f"({r['eval_rows']} rows), {r['halvings']} random halvings (calibrate on one half, report the other)\n",
             f"Teacher accuracy {pct(r['teacher_accuracy'])}%. Cheapest cascade within 0.5 point: "
             f"`{r['best_cascade']}` at {frac(r['cost_at_drop_0_5pt'])} of the teacher's FLOPs "
             f"(drop {r['drop_at_that_cost_points']:.2f} points).\n",
             "| cascade (student / training / deferral score) | student acc (%) | cost at ≤0.5 pt drop | drop (points) | "
             + " | ".join(f"acc at cost {b} (%) | oracle gap at {b} (points)" for b in ("0.1", "0.2", "0.3"))
             + " |", "|---|---:|---:|---:|" + "---:|" * 6]
    for name, c in r["cascades"].items():
        cells = []
        for b in ("0.1", "0.2", "0.3"):
            row = c["budgets"].get(b)
            cells += [pct(row["accuracy"]), f"{100 * row['oracle_gap']:.2f}"] if row else ["-", "-"]
        lines.append(f"| {name} | {pct(c['student_accuracy'])} | {frac(c['cost_at_drop_0_5pt'])} | "
                     f"{100 * c['drop_there']:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    for student, h in r["easy_kd_minus_standard_kd_at_equal_cost"].items():
        diff = h["easy_kd_minus_standard_kd_at_equal_cost"]
        lines.append(f"- {student}: best easy-KD cascade (`{h['easy']}`) minus best standard-KD cascade "
                     f"(`{h['kd']}`) at cost {r['equal_cost_budget']}: "
                     + ("not reachable" if diff is None else f"{diff:+.2f} points"))
    ee = r.get("early_exit_same_teacher")
    if ee:
        lines.append("- early exit on the same teacher (two-stage exits), same halvings: accuracy "
                     + ", ".join(f"{pct(a)}% at cost {b}" for b, a in ee["accuracy_at_budget"].items()))
    t = r.get("measured_time")
    if t:
        lines.append(f"- measured wall-clock of `{r['best_cascade']}` at its 0.5-point threshold on {t['rows']} report "
                     f"rows, batch {t['batch_size']}: {t['cascade_seconds']:.2f} s vs the teacher alone "
                     f"{t['teacher_seconds']:.2f} s (time fraction {t['time_fraction']:.2f}; FLOPs fraction "
                     f"{t['flops_fraction']:.2f}; deferral rate {t['deferral_rate']:.2f})")
    if r.get("plot"):
        lines += ["", f"![accuracy vs cost]({in_benchmarks(r['plot'])})"]
    return "\n".join(lines) + "\n"


def structured_kd(r: dict) -> str:
    reproduction = r.get("settings") == "reproduction"
    title = " (reproduction: the released code's settings)" if reproduction else ""
    lines = [f"## Sub-structured KD: CoNLL-2003 {r['task']}{title} (`{Path(r['command'].split()[1]).name}`)\n",
             provenance(r),
             f"- teacher: {r['teacher']}; student: {r['student']}\n- training sentences: "
             f"{r.get('train_sentences', r['train_subset'])}; student epochs: {r['epochs']}, teacher epochs: "
             f"{r['teacher_epochs']}; test sentences: {r['test_subset']}"
             + (f"; teacher outputs in the F1 runs: {r['teacher_outputs']}; learning-rate schedule: "
                f"{r['lr_schedule']}" if "teacher_outputs" in r else "") + "\n"]
    ratio = r.get("epoch_time_ratio_vs_marginal", {})
    if reproduction:  # epoch times with cached teacher outputs (the F1 runs) and with the teacher online
        lines += ["| method | test span F1 (%) | token F1 (%) | epoch, cached (s) | epoch, online (s) | "
                  "KD term (s) | epoch / marginal_kl's, cached | epoch / marginal_kl's, online |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, f1 in r["f1"].items():
            online = r.get("epoch_seconds_online", {}).get(name)
            lines.append(f"| {name} | {pct(f1)} | {pct(r.get('token_f1', {}).get(name))} | "
                         f"{r['epoch_seconds'][name]:.1f} | {frac(online, 1)} | "
                         f"{frac(r.get('kd_term_seconds', {}).get(name), 2)} | "
                         f"{frac(ratio.get('cached', {}).get(name), 2)} | {frac(ratio.get('online', {}).get(name), 2)} |")
        f1 = r["f1"]
        lines.append(f"\nSub-structure MSE minus gold only: {100 * (f1['substructure'] - f1['gold_only']):+.2f} points "
                     f"(target +1.0); minus marginal KL: {100 * (f1['substructure'] - f1['marginal_kl']):+.2f} points "
                     f"(target ≥ −0.3); its KD term costs {r['kd_term_ratio_vs_marginal']['substructure']:.3f}× "
                     "marginal KL's (target ≤ 0.5).")
        return "\n".join(lines) + "\n"
    lines += ["| method | test span F1 (%) | token accuracy (%) | epoch (s) | teacher fwd (s) | student fwd (s) | "
              "backward (s) | epoch / marginal_kl's |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f1 in r["f1"].items():
        parts = r["epoch_seconds_parts"].get(name, {})
        lines.append(f"| {name} | {pct(f1)} | {pct(r['token_accuracy'].get(name))} | "
                     f"{r['epoch_seconds'][name]:.1f} | {parts.get('teacher_forward', 0):.1f} | "
                     f"{parts.get('student_forward', 0):.1f} | {parts.get('backward', 0):.1f} | "
                     f"{frac(ratio.get(name), 2)} |")
    return "\n".join(lines) + "\n"


def progressive(r: dict) -> str:
    lines = [f"## Progressive ensemble (B-DISTIL, reconstructed): {r['benchmark'].removeprefix('progressive_')} "
             f"(`{Path(r['command'].split()[1]).name}`)\n", provenance(r),
             f"- teacher: {r['teacher']}; training rows: {r['train_subset']}; epochs: {json.dumps(r['epochs'])}; "
             f"evaluation: {r['eval_data']} ({r['eval_rows']} rows), {r['halvings']} random halvings (RESCHED "
             "weights and early-exit thresholds from one half, every accuracy on the other)\n",
             f"Teacher accuracy {pct(r['teacher_accuracy'])}%. Full ensemble: {frac(r['full_ensemble_cost_fraction'])} "
             f"of the teacher's FLOPs, {r['full_ensemble_drop_points']:.2f} points below it. B-DISTIL minus RESCHED, "
             f"worst prefix: {r['min_margin_vs_resched']:+.2f} points; NO-RESCHED minus B-DISTIL, worst prefix: "
             f"{r['max_gap_to_no_resched']:+.2f} points. Accuracy never falls from one prefix to the next: "
             + ", ".join(f"{m} {'yes' if v else ('-' if v is None else 'no')}" for m, v in r["monotone"].items())
             + ".\n",
             "| k | member | cost (FLOPs) | ms/example (batch 32) | FLOPs promise kept | B-DISTIL (%) | no composition (%) | "
             "RESCHED (%) | NO-RESCHED (%) at cost | early exit (%) at cost |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in r["prefixes"]:
        a = p["accuracy"]
        lines.append(f"| {p['k']} | {p['member']} | {p['cost_fraction']:.3g} | {p['measured_ms_per_example']:.2f} | "
                     f"{p['latency_over_flops_promise']:.2f} | {pct(a['bdistil'])} | {pct(a['bdistil_no_composition'])} | "
                     f"{pct(a['resched'])} | {pct(a['no_resched'])} at {p['no_resched_cost_fraction']:.3g} | "
                     f"{pct(a['early_exit'])} at {frac(p['early_exit_cost_fraction'])} |")
    lines += ["", "Rounds (FIND-WL, candidates in order; the condition is edge ≥ γ on held-out training rows):", ""]
    for label, key in (("composition", "rounds"), ("no composition", "rounds_no_composition")):
        steps = []
        for rd in r[key]:
            tried = ", ".join(f"{t['candidate']} {t['edge']:.3f}" for t in rd["tried"])
            steps.append(f"round {rd['round']}: tried {tried}; took {rd['taken']} "
                         f"({'condition held' if rd['condition_held'] else 'condition not met'})")
        lines.append(f"- {label}: " + "; ".join(steps))
    if r.get("plot"):
        lines += ["", f"![accuracy vs cost]({in_benchmarks(r['plot'])})"]
    return "\n".join(lines) + "\n"


def serve_load(r: dict) -> str:
    t = r["targets"]
    o = r["overload"]
    lines = ["## Serving under load, overload and faults (`serve_load.py`)\n", provenance(r),
             f"- {r['notes']}\n",
             "Targets: " + ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in t.items()) + ".",
             f"Batched early exit over the teacher served one request at a time: "
             f"{r['batched_early_exit_over_teacher_rps']:.2f}x the requests per second at equal or lower p99. "
             f"Overload ({o['load_factor']}x capacity): {o['accepted']} accepted, {o['lost']} lost, {o['wrong']} wrong, "
             f"{o['errors_5xx']} 5xx, {o['refusals']} refusals ({o['refusals_without_retry_after']} without "
             f"Retry-After), peak RSS {o['peak_rss_mb']:.0f} MB.\n",
             "| configuration | run | rps | p50 ms | p95 ms | p99 ms | goodput/s | mean batch rows | realised cost | "
             "rejected | 5xx | lost | peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for name, c in r["configurations"].items():
        for run, x in c["runs"].items():
            rejected = ", ".join(f"{k} {v}" for k, v in x["rejected"].items()) or "0"
            lines.append(f"| {name} | {run} | {x['rps']:.1f} | {x['p50_ms']:.1f} | {x['p95_ms']:.1f} | "
                         f"{x['p99_ms']:.1f} | {x['goodput']:.1f} | {frac(x['mean_batch_rows'], 1)} | "
                         f"{frac(x['realised_cost'])} | {rejected} | {x['errors_5xx']} | {x['lost']} | "
                         f"{x['peak_rss_mb']:.0f} |")
    lines += ["", "Realised cost minus budget (early exit, budget " + str(r["settings"]["budget"]) + "): "
              + ", ".join(f"{k} {v:+.3f}" for k, v in r["realised_cost_minus_budget"].items()) + "."]
    if r.get("screenshot"):
        lines += ["", f"![demo page]({in_benchmarks(r['screenshot'])})"]
    return "\n".join(lines) + "\n"


def int8(r: dict) -> str:
    lines = ["## int8 stages (`int8.py`)\n", provenance(r), f"- {models_of(r['settings']['models'])}; {r['notes']}\n",
             "| configuration | accuracy (%) | rows/s (batch 32) | cost (FLOPs fraction) |", "|---|---:|---:|---:|"]
    for name, c in r["configs"].items():
        lines.append(f"| {name} | {c['accuracy']:.2f} | {c['rows_per_second_bs32']:.1f} | {c['cost_fraction']:.3f} |")
    lines += ["", f"int8 early exit: {r['int8_early_exit_over_fp32_full_throughput']:.2f}x the fp32 full model's "
              f"throughput, {r['int8_early_exit_drop_points']:+.2f} points below it (target 3.5x within 1 point: "
              f"{'met' if all(r['targets'].values()) else 'missed'})."]
    return "\n".join(lines) + "\n"


def multi_teacher(r: dict) -> str:
    status = "complete" if r.get("complete") else "partial: not every run has finished yet"
    lines = [f"## Multi-teacher KD with per-example selection (RL-KD, reconstructed): {r['dataset']} "
             f"(`multi_teacher.py`, {status})\n", provenance(r),
             f"- training rows: {r['train_subset']}; epochs: {json.dumps(r['epochs'])}; accuracy on the whole dev "
             "split after the last epoch (no selection on dev); epoch seconds: the loop's own per-epoch clock\n",
             "Teachers: " + ", ".join(f"{n} {100 * t['accuracy']:.2f}% ({t['flops_per_example']:.3g} FLOPs)"
                                      for n, t in r["teachers"].items()) + ".\n",
             "| student | weighting | accuracy mean (%) | std | seeds | epoch s |", "|---|---|---:|---:|---|---:|"]
    for student, rows in r["students"].items():
        for weighting, v in rows.items():
            lines.append(f"| {student} | {weighting} | {v['accuracy_mean']:.2f} | {v['accuracy_std']:.2f} | "
                         f"{','.join(map(str, v['seeds']))} | {frac(v['epoch_seconds'], 1)} |")
    lines += ["", "Reinforced minus uniform (points): " + ", ".join(
        f"{s} {v:+.2f}" for s, v in r.get("reinforced_minus_uniform", {}).items()) + "; reinforced minus the best "
        "single-teacher KD student: " + ", ".join(f"{s} {v:+.2f} (vs {r['best_single'][s]})"
                                                  for s, v in r.get("reinforced_minus_best_single", {}).items()) + "."]
    if r.get("mean_weight_per_teacher"):
        lines += ["", "Mean policy weight per teacher: " + "; ".join(
            f"{s}: " + ", ".join(f"{t} {w:.2f}" for t, w in ws.items()) for s, ws in r["mean_weight_per_teacher"].items())]
    if r.get("plot"):
        lines += ["", f"![policy weight by teacher agreement](results/{Path(r['plot']).name})"]
    return "\n".join(lines) + "\n"


def early_exit_conll(r: dict) -> str:
    lines = ["## Early exit for a tagger: CoNLL-2003 NER (`early_exit_conll2003.py`)\n", provenance(r),
             f"- {r['model']}; training sentences: {r['train_subset']}, epochs {r['epochs']} "
             f"({r['train_minutes']:.1f} min); thresholds from {r['calibration_split']}, reported on "
             f"{r['report_split']}\n",
             f"Full tagger span F1 {r['full_f1']:.2f}; per exit: {', '.join(f'{f:.2f}' for f in r['exit_f1'])}; "
             f"oracle (earliest exit agreeing with the last) within 1 point at cost "
             f"{frac(r['oracle_cost_at_drop_1pt'])}.\n",
             "| sentence score | cost at the dev threshold | test span F1 | drop (points) |", "|---|---:|---:|---:|"]
    for name, p in r["policies"].items():
        lines.append(f"| {name} | {p['cost_at_drop_1pt']:.3f} | {p['f1']:.2f} | {p['drop_points']:+.2f} |")
    lines += ["", f"Target (within 1 point at <= 0.6 of the FLOPs): {'met' if r['target_met'] else 'missed'}.",
              "", f"![F1 against cost](results/{Path(r['plot']).name})"]
    return "\n".join(lines) + "\n"


def executor_overhead(r: dict) -> str:
    lines = ["## Executor overhead and realised speed-up (`executor_overhead.py`)\n", provenance(r),
             f"- {r['model']}; {r['rows']} rows ({r['rows_source']}); budget {r['budget']}\n",
             "| batch | adaptive at inf / full | regroup always at inf / full | realised / promised (model only) "
             "| realised / promised (tokenisation included) |", "|---|---:|---:|---:|---:|"]
    for bs, o in r["overhead_at_inf"].items():
        sp = r["speedup"][bs]
        lines.append(f"| {bs} | {o['adaptive_over_full']:.3f} | {o['regroup_always_over_full']:.3f} | "
                     f"{sp['realised_over_theoretical']:.3f} | {sp['realised_over_theoretical_with_tokenisation']:.3f} |")
    return "\n".join(lines) + "\n"


def core_surface(r: dict) -> str:
    lines = ["## The package's shape: one staged core (`core_surface.py`)", "", provenance(r), "",
             f"Before: `{r['base'][:7]}` (main before the rework); after: the commit above. Definitions in "
             "`tests/surface_metrics.py`.", "", "| measure | before | after |", "|---|---:|---:|"]
    for key in ("plain_staged_branches", "cost_measurement_functions", "timing_loops", "benchmark_protocol_copies",
                "top_level_modules", "largest_class_lines", "largest_class_methods", "src_lines"):
        lines.append(f"| {key} | {r[key]['before']} | {r[key]['after']} |")
    tests = r["default_tests"]
    lines.append(f"| default_tests (passed / skipped) | {tests['before'].get('passed')} / "
                 f"{tests['before'].get('skipped', 0)} | {tests['after'].get('passed')} / {tests['after'].get('skipped', 0)} |")
    lines.append(f"| default_test_seconds | {r['default_test_seconds']['before']:.1f} | "
                 f"{r['default_test_seconds']['after']:.1f} |")
    return "\n".join(lines) + "\n"


def refactor_parity(r: dict) -> str:
    lines = ["## Behaviour kept through the rework (`refactor_parity.py`)", "", provenance(r), "",
             f"Base `{r['base'][:7]}`, head `{r['head'][:7]}`; each side trained and evaluated by its own code at small "
             "settings; every non-timing, non-provenance figure compared.", "",
             "| result file | settings | compared | identical | differ |", "|---|---|---:|---:|---:|"]
    for name, f in r["files"].items():
        lines.append(f"| {name} | `{r['settings'][name]}` | {f['compared']} | {f['identical']} | {f['differ']} |")
    return "\n".join(lines) + "\n"


def reliability(r: dict) -> str:
    cases = r["bad_input_cases"]
    lines = ["## Reliability: bad input, CI tiers, the server's bounds (`reliability.py`)", "", provenance(r), "",
             f"Bad-input suite: **{cases['total']} cases** in the default tier ("
             + ", ".join(f"{k} {v}" for k, v in cases.items() if k != "total") + ").", ""]
    ci = r.get("ci_tiers") or {}
    tiers = [(name, t) for name, t in ci.items() if isinstance(t, dict)]
    if tiers:
        lines += ["| CI tier (fresh clone, `.ci/run`) | passed | skipped | seconds |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {t.get('passed')} | {t.get('skipped', 0)} | {t.get('seconds')} |" for name, t in tiers]
        lines += ["", f"Whole `.ci/run` with its installs: {ci.get('wall_seconds_with_installs')} s, exit code "
                  f"{ci.get('exit_code')}.", ""]
    slow, gone, term, big = (r["slow_clients"], r["work_after_disconnect_seconds"], r["sigterm_exit_seconds"],
                             r["max_response_bytes"])
    lines += ["| server bound | configured | measured |", "|---|---|---|",
              f"| slow clients ({slow['connections']}: half a head / half a body) | read timeout {slow['read_timeout_s']} s "
              f"| held at most {slow['half_head']['held_seconds_max']} / {slow['half_body']['held_seconds_max']} s; "
              f"answers {slow['half_head']['answers']} / {slow['half_body']['answers']}; another client meanwhile "
              f"{slow['other_client_status_meanwhile']} |",
              f"| work after a disconnect ({gone['rows']} rows, batches of {gone['max_batch_rows']}) | - | "
              f"{gone['after_disconnect']} s (the whole request: {gone['request_seconds_to_its_end']} s) |",
              f"| work after the server's own 504 | request timeout {gone['request_timeout_s_for_504']} s | "
              f"{gone['after_504']} s |",
              f"| SIGTERM during a {term['rows']}-row request | drain window {term['drain_seconds']} s | exit after "
              f"{term['exit_seconds']} s (code {term['exit_code']}); the client got {term['answer_status']} "
              f"{term['answer_reason']} |",
              f"| answer size, {big['classes']:,}-class model | {big['limit']:,} bytes | largest sent "
              f"{big['largest_answer_bytes']:,}; over it: {big['refused_status']} |"]
    return "\n".join(lines) + "\n"


def auto(r: dict) -> str:
    reduced = f", first {r['train_limit']:,} training rows" if r.get("train_limit") else ""
    lines = [f"## summon auto: {r['dataset']}{reduced} (`auto.py`)", "", provenance(r), "",
             f"- `{r['auto_command']}`", f"- target {r['target']}, delta {r['delta']}; budget "
             f"{r['time_budget_minutes']:g} min, used {r['minutes_used']:g} min; held-out rows {r['rows']}", ""]
    lines += ["| candidate | method | train min | cost at target | ms/example bs32 | accuracy | skipped |",
              "|---|---|---:|---:|---:|---:|---|"]
    for c in r["candidates"]:
        lines.append(f"| {c['name']} | {c['method']} | {frac(c['train_minutes'], 2)} | {frac(c['cost_at_target'])} | "
                     f"{frac(c['ms_per_example_bs32'])} | {frac(c['accuracy'], 4)} | {c['pruned_at'] or ''} |")
    chosen, hand = r.get("chosen"), r["best_hand_run_cost_at_target"]
    if chosen:
        lines += ["", f"Chosen: **{chosen['name']}** at {frac(chosen['cost_at_target'])} of the teacher's FLOPs, "
                  f"measured speed-up at batch 32 {chosen['speedup_bs32_measured']:.2f}x, certified drop ≤ "
                  f"{chosen['certified_drop_points']:.2f} points. Best hand-run cost at the target: "
                  f"{frac(hand['cost'])} ({hand['source']}); chosen minus it: {frac(r.get('chosen_minus_best_hand_run'))}."]
    free = r.get("chosen_without_guarantee")
    if free:
        lines += ["", f"Without the guarantee (the cheapest point within the target as measured on the selection rows): "
                  f"**{free['name']}** at {frac(free['cost_at_target'])}; minus the best hand-run cost: "
                  f"{frac(free['minus_best_hand_run'])}."]
    lines += ["", f"Guarantee violation rate over {r['resplit_study']['resplits']} re-splits: "
              f"{r['guarantee_violation_rate']:.2f}; resume after kills gives the same choice: "
              f"{r.get('resume_same_choice', 'not run')}."]
    return "\n".join(lines) + "\n"


SECTIONS = {"foundation_sst2.json": foundation, "early_exit_sst2.json": early_exit,
            "early_exit_ag_news.json": early_exit, "cascade_sst2.json": cascade, "cascade_ag_news.json": cascade,
            "structured_kd_ner.json": structured_kd, "structured_kd_chunking.json": structured_kd,
            "structured_kd_ner_ours.json": structured_kd, "structured_kd_chunking_ours.json": structured_kd,
            "progressive_ag_news.json": progressive, "progressive_sst2.json": progressive,
            "serve_load.json": serve_load, "int8.json": int8, "multi_teacher_sst2.json": multi_teacher,
            "multi_teacher_mrpc.json": multi_teacher, "early_exit_conll2003.json": early_exit_conll,
            "executor_overhead.json": executor_overhead, "core_surface.json": core_surface,
            "refactor_parity.json": refactor_parity, "reliability.json": reliability, "auto_sst2.json": auto,
            "auto_sst2_small.json": auto, "auto_ag_news.json": auto, "auto_mrpc.json": auto, "auto_imdb.json": auto}


def main() -> None:
    parts = [INTRO]
    for name, render in SECTIONS.items():
        path = RESULTS / name
        if path.is_file():
            parts.append(render(json.loads(path.read_text())))
    (HERE / "README.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
