"""Wiring mistakes that the test suite must catch: each mutant is one small edit of the code.

    python tests/mutants.py              # every mutant, each in a fresh copy of the tree
    python tests/mutants.py --only ar    # the mutants whose names contain "ar"

For each mutant the script copies the working tree to a temporary folder, makes the edit there,
runs the default test suite with -x (tests/test_wiring.py first), and reports whether the suite
failed ("caught") or passed ("SURVIVED"). The working tree itself is never touched. Exit code 1
if any mutant survived, 2 if an edit no longer applies (the code it targets has changed: update
the mutant).
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, the code as it is, the code with the mistake)
MUTANTS = {
    "ar-tar-swapped": ("lm/training.py", 'activation_regularization(out.dropped, cfg["alpha"])\n'
                       '                + temporal_activation_regularization(out.raw, cfg["beta"])',
                       'activation_regularization(out.raw, cfg["alpha"])\n'
                       '                + temporal_activation_regularization(out.dropped, cfg["beta"])'),
    "lr-factor-fixed-at-1": ("lm/training.py", 'factor = x.size(0) / cfg["bptt"] if cfg["variable_bptt"] else 1.0',
                             "factor = 1.0"),
    "seq-len-fixed-at-bptt": ("lm/training.py", 'seq_len = sample_seq_len(cfg["bptt"], run.lengths) if '
                              'cfg["variable_bptt"] else cfg["bptt"]', 'seq_len = cfg["bptt"]'),
    "position-advances-by-bptt": ("lm/training.py", "state.position += x.size(0)", 'state.position += cfg["bptt"]'),
    "state-reset-every-batch": ("lm/training.py", "step = train_step(run.net, x, y, run.hidden,",
                                'step = train_step(run.net, x, y, model.init_hidden(cfg["batch_size"]),'),
    "input-output-dropout-swapped": ("model.py", "LockedDropout(cfg.dropout_input, cfg.locked_dropout)",
                                     "LockedDropout(cfg.dropout_output, cfg.locked_dropout)"),
    "hidden-dropout-after-last-layer": ("model.py", "if i < len(self.rnns) - 1:", "if True:"),
    "no-locked-dropout-ignored-for-hidden": ("model.py", "LockedDropout(cfg.dropout_hidden, cfg.locked_dropout)",
                                             "LockedDropout(cfg.dropout_hidden)"),
    "embedding-dropout-not-in-forward": ("model.py", "x = embedding_dropout(self.encoder.weight, tokens, "
                                         "self.cfg.dropout_embedding, self.training, tied)",
                                         "x = self.encoder(tokens)"),
    "embedding-mask-drawn-not-applied": ("model.py", "return emb * dropout_mask((weight.size(0), 1), p, "
                                         "weight.device)[tokens]",
                                         "dropout_mask((weight.size(0), 1), p, weight.device)\n    return emb"),
    "finetune-from-last-pt": ("lm/config.py", "ckpt = load_checkpoint(finetune, BEST)",
                              "ckpt = load_checkpoint(finetune, LAST)"),
    "finetune-skips-its-start": ("train.py", "run.state.best_val_loss = run.validate().loss",
                                 "run.state.best_val_loss = math.inf"),
    "finetune-lr-not-inherited": ("lm/config.py", 'lr = saved["lr"] if saved["optimizer"] in ("sgd", "nt-asgd") '
                                  'else DEFAULT_LR["nt-asgd"]', 'lr = DEFAULT_LR["nt-asgd"]'),
    "no-weight-decay": ("lm/training.py", "torch.optim.SGD(params, lr=lr, weight_decay=wd)",
                        "torch.optim.SGD(params, lr=lr)"),
    "awd-decoder-bias-not-zeroed": ("model.py", "        nn.init.zeros_(self.decoder.bias)\n        if cfg.tied:",
                                    "        if cfg.tied:"),
    "no-clipping-for-awd": ("lm/training.py", 'if cfg["clip"] > 0:',
                            'if cfg["clip"] > 0 and type(model).__name__ != "AWDLSTM":'),
    "bf16-target-gradient": ("lm/logits.py", "probs[rows, targets] = rest.neg().to(probs.dtype)",
                             "probs[rows, targets] = (p_target - 1).to(probs.dtype)"),
    "bf16-dropout-mask": ("model.py", "return x * dropout_mask(shape, self.p, x.device)",
                          "return x * dropout_mask(shape, self.p, x.device).to(x.dtype)"),
    "validation-in-training-dtype": ("lm/trainrun.py",
                                     'scores = evaluate(self.model, self.val_data, self.cfg["val_dtype"])',
                                     'scores = evaluate(self.model, self.val_data, self.cfg["dtype"])'),
    "schedule-ignores-max-batches": ("lm/trainrun.py", 'if self.cfg["max_batches"]:\n            part = max(',
                                     'if False:\n            part = max('),
    "schedule-ignores-max-minutes": ("lm/optim.py", "by_time = seconds / (60 * max_minutes) if max_minutes else 0.0",
                                     "by_time = 0.0"),
    "resume-skips-checks": ("lm/config.py", '    cfg = {**LATER_FLAGS, **saved, **given, "save": str(run)}\n'
                            "    check_config(cfg, given)\n",
                            '    cfg = {**LATER_FLAGS, **saved, **given, "save": str(run)}\n'),
    "cache-sees-its-own-position": ("lm/cache.py", "visible = (k < q)", "visible = (k <= q)"),
    "cache-memory-not-carried": ("lm/cache.py", "self.keys, self.words = keys[-self.window:].clone()",
                                 "self.keys, self.words = None and keys[-self.window:].clone()"),
    "cache-mixed-where-memory-empty": ("lm/cache.py", "torch.where(visible.any(1, keepdim=True), self.lam, 0.0)",
                                       "torch.where(visible.any(1, keepdim=True), self.lam, self.lam)"),
    "cache-original-gaps-off-by-one": ("lm/cache.py", "(g > self.window)", "(g >= self.window)"),
    "cache-model-alone-counted-after-the-mixture": (
        "lm/cache.py", "                log_likelihood, hits = model_scores(log_probs, t)  # before the mixture "
        "overwrites log_probs\n                self.model_nats -= log_likelihood\n"
        "                self.model_correct += hits\n"
        "                s, e = start // batch, (start + t.numel()) // batch\n"
        "                weights, lam, key_words = self.attend(raw[s:e], keys, words, first + s, seen + s)\n"
        "                log_likelihood, hits = mixture_scores(",
        "                s, e = start // batch, (start + t.numel()) // batch\n"
        "                weights, lam, key_words = self.attend(raw[s:e], keys, words, first + s, seen + s)\n"
        "                mixed = mixture_scores(log_probs.view(e - s, batch, -1), t.view(e - s, batch), weights, lam, "
        "key_words)\n                log_likelihood, hits = model_scores(log_probs, t)\n"
        "                self.model_nats -= log_likelihood\n                self.model_correct += hits\n"
        "                log_likelihood, hits = mixed\n                _ = mixture_scores("),
    "cache-chunk-scored-against-the-first-targets": ("lm/cache.py", "t = flat[start:start + log_probs.size(0)]",
                                                     "t = flat[:log_probs.size(0)]"),
    "log-prob-chunks-all-start-at-zero": ("lm/decoder.py", "        yield start, chunk", "        yield 0, chunk"),
    "average-start-late": ("lm/training.py", 'run.progress() >= cfg["average_start"]',
                           'run.progress() > cfg["average_start"] + 0.1'),
    "dyneval-decay-away-from-theta0": ("lm/dyneval.py", "self.keep = [1 - d for d in decay]",
                                       "self.keep = [1 + d for d in decay]"),
    "dyneval-one-pass-decays-away": ("lm/dyneval.py", "clamp(max=1) * (t - p) - lr * g",
                                     "clamp(max=1) * (p - t) - lr * g"),
    "dyneval-decay-not-clipped": ("lm/dyneval.py", "decay = [(m * lam_over_mean).clamp_(max=1) for",
                                  "decay = [(m * lam_over_mean) for"),
    "dyneval-one-pass-decay-not-clipped": ("lm/dyneval.py", "(m * lam_over_mean).clamp(max=1) * (t - p)",
                                           "(m * lam_over_mean) * (t - p)"),
    "dyneval-kept-pass-continues-from-a-zero-state": (
        "lm/dyneval.py", 'hidden = map_hidden(lambda h: h.to(device), saved["hidden"])',
        'hidden = map_hidden(lambda h: torch.zeros_like(h).to(device), saved["hidden"])'),
    "dyneval-kept-pass-without-its-cache": (
        "lm/dyneval.py", "    if cache is not None:\n        cache.load", "    if False:\n        cache.load"),
    "dyneval-theta0-not-restored": ("lm/dyneval.py", "        torch._foreach_copy_(self.params, self.theta0)",
                                    "        pass"),
    "dyneval-state-reset-per-segment": ("lm/dyneval.py", "n, c, hidden = _segment(model, adaptation, x, y,",
                                        "n, c, _ = _segment(model, adaptation, x, y,"),
    "dyneval-scores-after-the-update": ("lm/dyneval.py", "    adaptation.step(segment.grads)\n",
                                        "    adaptation.step(segment.grads)\n"
                                        "    scored = scored if cache else model.score(x, y, hidden)[:2]\n"),
    "dyneval-tied-rows-left-out-of-the-step": ("lm/decoder.py", "grad.add_rows(tokens.reshape(-1), grad_out.reshape",
                                               "(tokens.reshape(-1), grad_out.reshape"),
    "dyneval-ms-without-sqrt": ("lm/dyneval.py", "(s / len(starts)).sqrt_()", "(s / len(starts))"),
    "dyneval-mean-over-entries": ("lm/dyneval.py", "mean_ms = sum(m.mean() for m in self.ms) / len(self.ms)",
                                  "mean_ms = torch.cat([m.flatten() for m in self.ms]).mean()"),
    "dyneval-ignores-the-cache": ("lm/dyneval.py", "if cache is None else cache.score(", "if True else cache.score("),
    "tied-lookup-drops-the-decoder-gradient": ("lm/decoder.py", "grad, ctx.tied.grad = ctx.tied.grad, None",
                                               "grad, ctx.tied.grad = None, None"),
    "tied-decoder-gradient-without-a-lookup": ("lm/decoder.py", "if ctx.tied is not None and ctx.tied.lookup:",
                                               "if ctx.tied is not None:"),
    "resume-drops-the-fused-optimizer": ("lm/trainrun.py", 'load_optimizer_state(self.optimizer, ckpt["optimizer"])',
                                         'self.optimizer.load_state_dict(ckpt["optimizer"])'),
    "scored-loss-scores-the-softmax": ("lm/decoder.py", "                    _log_softmax_(probs, log_probs)",
                                       "                    torch.softmax(probs, dim=1, out=probs)\n"
                                       "                    _log_softmax_(probs, log_probs)"),
    "bf16-default-on-emulated-gpu": ("lm/precision.py", "return torch.cuda.is_available() and "
                                     "torch.cuda.get_device_capability(device) >= (8, 0)",
                                     "return torch.cuda.is_bf16_supported()"),
    "fp16-not-the-default-on-older-gpus": ("lm/precision.py", 'return "fp16" if torch.device(device).type == "cuda" '
                                           'else "fp32"', 'return "fp32"'),
    "fp16-allowed-on-cpu": ("lm/precision.py", 'if dtype == "fp16" and kind != "cuda":', "if False:"),
    "fp16-allowed-for-unscaled-gradients": ("lm/precision.py", 'if dtype == "fp16" and unscaled_backward:',
                                            "if False:"),
    "other-accelerators-refused": ("lm/cli.py", "available = current is not None and current.type == kind",
                                   "available = False"),
    "clip-before-unscale": ("lm/training.py", '    scaler.unscale_(optimizer)\n    if cfg["clip"] > 0:',
                            '    if cfg["clip"] > 0:'),
    "skipped-step-averaged": ("lm/training.py", "        if step.applied:\n            run.averaging.after_step(model)",
                              "        run.averaging.after_step(model)"),
    "skipped-step-counted-as-a-batch": ("lm/training.py", "state.batches += step.applied", "state.batches += 1"),
    "skipped-step-loss-counted": ("lm/training.py", "counted = y.numel() if step.applied else 0",
                                  "counted = y.numel()"),
    "skipped-rows-move-the-schedule": ("lm/trainrun.py", "(self.state.position - self.state.skipped_rows)",
                                       "(self.state.position)"),
    "scaler-state-not-saved": ("lm/trainrun.py", "hidden, rng,\n" + " " * 36 + "self.scaler.state_dict())",
                               "hidden, rng,\n" + " " * 36 + "None)"),
    "one-process-torchrun-not-distributed": ("lm/distributed.py", "return self.size > 1 or self.launched",
                                             "return self.size > 1"),
    "all-skipped-epoch-unchecked": ("train.py", "    if not state.train_tokens:\n", "    if False:\n"),
    "skipped-step-reported-applied": ("lm/optim.py", "return self.scale >= before", "return True"),
    "resume-needs-a-scaler-entry": ("lm/trainrun.py", 'self.scaler.load_state_dict(ckpt.get("scaler"))',
                                    'self.scaler.load_state_dict(ckpt["scaler"])'),
    "scaler-state-not-restored": ("lm/trainrun.py", 'self.scaler.load_state_dict(ckpt.get("scaler"))',
                                  "self.scaler.load_state_dict(None)"),
    "digest-not-checked": ("lm/checkpoint.py", "if sha.hexdigest().encode() != view[end + 22 + len(DIGEST_TAG):]:",
                           "if False:"),
    "lock-never-taken": ("train.py", 'with RunLock(cfg["save"], enabled=world.main) as lock:',
                         'with RunLock(cfg["save"], enabled=False) as lock:'),
    "torn-last-metrics-line-refused": ("lm/checkpoint.py", "            if i < len(lines) - 1:\n                raise",
                                       "            if True:\n                raise"),
    "unreadable-recorded-metrics-line-dropped": ("lm/checkpoint.py",
                                                 "            if i < len(lines) - 1:\n                raise",
                                                 "            if False:\n                raise"),
    "metrics-of-unsaved-epochs-kept": ("lm/checkpoint.py", "        if row is not None and epoch <= epochs_done:\n",
                                       "        if row is not None:\n"),
    "config-written-before-the-metrics-check": (
        "lm/trainrun.py", "                metrics, note = kept_metrics(self.dir, self.state.epoch)",
        "                if self.dir.is_dir():\n                    write_config(self.dir, self.cfg)\n"
        "                metrics, note = kept_metrics(self.dir, self.state.epoch)"),
    "gpu-preset-with-our-betas": ("lm/presets.py", '"adam_betas": [0.8, 0.99], "wdecay": 1.2e-6',
                                  '"adam_betas": [0.7, 0.99], "wdecay": 1.2e-6'),
    "flat-onecycle-never-flat": ("lm/optim.py", "    if progress < 0.5:\n        return base_lr\n", ""),
    "flat-onecycle-not-scheduled-in-training": ("lm/training.py", 'if cfg["schedule"] in PROGRESS_SCHEDULES:',
                                                'if cfg["schedule"] in ("cosine", "onecycle"):'),
    "gpu-summary-target-sense-flipped": ("experiments/gpu_summary.py", 'found[key] <= bound if sense == "max"',
                                         'found[key] >= bound if sense == "max"'),
    # Issue 35: what users rely on beyond each technique alone.
    "resume-loses-the-optimizer-state": ("lm/trainrun.py", 'load_optimizer_state(self.optimizer, ckpt["optimizer"])',
                                         'load_optimizer_state(self.optimizer, {**ckpt["optimizer"], "state": {}})'),
    "resume-restarts-the-adam-step-count": (
        "lm/training.py", "    optimizer.load_state_dict(state)\n",
        '    optimizer.load_state_dict({**state, "state": {k: {**v, "step": v["step"] * 0} '
        'for k, v in state["state"].items()}})\n'),
    "resume-keeps-metrics-of-unsaved-epochs": ("lm/trainrun.py", "                if metrics is not None:\n"
                                               "                    write_metrics(self.dir, metrics)\n", ""),
    "nt-asgd-restarts-when-the-trigger-holds-again": ("lm/optim.py",
                                                      'if self.mode == "trigger" and not self.active and trigger:',
                                                      'if self.mode == "trigger" and trigger:'),
    "dyneval-valid-and-train-at-batch-10": ("evaluate.py", "not (cache or dynamic) else 1", "not cache else 1"),
    "temperature-after-the-filter": ("generate.py",
                                     "filter_logits(out.logits[-1, 0].float() / temperature, top_k, top_p)",
                                     "filter_logits(out.logits[-1, 0].float(), top_k, top_p) / temperature"),
    "last-line-dropped-without-a-final-newline": ("data.py",
                                                  'return lines[:-1] if text.endswith("\\n") else lines',
                                                  "return lines[:-1]"),
    "continued-cache-forgets-its-position": ("lm/cache.py", 'state["words"], state["seen"]', 'state["words"], 0'),
    # A further round over the scripts' flags and resume paths.
    "fault-tests-checkpoint-one-batch-early": ("lm/trainrun.py", "faults.checkpoint_due(self.state.batches + 1)",
                                               "faults.checkpoint_due(self.state.batches)"),
    "kept-pass-key-ignores-the-cache-gaps": ("lm/passfile.py",
                                             "repr((cache.window, cache.theta, cache.lam, cache.gaps))",
                                             "repr((cache.window, cache.theta, cache.lam))"),
    "generate-ignores-the-prompt": ("generate.py", "ids = generate(model, prompt_ids, length,",
                                    "ids = generate(model, [], length,"),
    # Issue 32: the experiment drivers run the scripts as a user would.
    "driver-drops-the-script-arguments": ("experiments/scripts.py", "*map(str, argv)]", "*map(str, argv[:1])]"),
    # Issue 33: the QRNN and the Transformer baseline.
    "qrnn-fo-pooling-gates-swapped": ("lm/qrnn.py", "keep = 1 - f\n        fz = f * z",
                                      "keep = f\n        fz = (1 - f) * z"),
    "qrnn-backward-uses-the-same-steps-gate": ("lm/qrnn.py", "keep[t + 1], g[t + 1]", "keep[t], g[t + 1]"),
    "qrnn-previous-input-not-carried": ("lm/qrnn.py", "return torch.sigmoid(o) * c, (c[-1:], last)",
                                        "return torch.sigmoid(o) * c, (c[-1:], torch.zeros_like(last))"),
    "qrnn-weight-drop-not-applied": ("lm/qrnn.py", "F.linear(source, self.dropped_weight(), self.bias)",
                                     "F.linear(source, self.weight, self.bias)"),
    "qrnn-weight-drop-in-eval": ("lm/qrnn.py", "if self.training and self.weight_drop:", "if self.weight_drop:"),
    "qrnn-tied-by-a-copy": ("model.py", "nn.init.zeros_(self.decoder.bias)\n        if cfg.tied:\n"
                            "            self.decoder.weight = self.encoder.weight",
                            "nn.init.zeros_(self.decoder.bias)\n        if cfg.tied:\n"
                            "            self.decoder.weight = nn.Parameter(self.encoder.weight.detach().clone())"),
    "bench-batch-size-ignored": ("bench.py", 'cfg = {**cfg, "batch_size": batch_size or cfg["batch_size"]}',
                                 "cfg = {**cfg}"),
    "qrnn-window-1-on-every-layer": ("lm/qrnn.py", "zip(cfg.layer_sizes(), cfg.windows(), strict=True)",
                                     "zip(cfg.layer_sizes(), [1] * cfg.nlayers, strict=True)"),
    "qrnn-gpu-preset-keeps-the-lstm-weight-drop": ("lm/presets.py", '"seed", "dropout_input", "dropout_hidden", '
                                                   '"dropout_weight")', '"seed", "dropout_input", "dropout_hidden")'),
    "gpu-summary-qrnn-row-reads-the-main-logs": ("experiments/gpu_summary.py", 'training(logs, "qrnn-")',
                                                 "training(logs)"),
    "transformer-mask-sees-the-next-position": ("lm/transformer.py", "dtype=torch.bool, device=device).tril()",
                                                "dtype=torch.bool, device=device).tril(1)"),
    "transformer-mask-hides-each-position-from-itself": ("lm/transformer.py",
                                                         "dtype=torch.bool, device=device).tril()",
                                                         "dtype=torch.bool, device=device).tril(-1)"),
    "transformer-post-norm": ("lm/transformer.py", "x = x + self.drop(self.attn(self.norm_attn(x)))\n"
                              "        return x + self.drop(self.mlp(self.norm_mlp(x)))",
                              "x = self.norm_attn(x + self.drop(self.attn(x)))\n"
                              "        return self.norm_mlp(x + self.drop(self.mlp(x)))"),
    "transformer-tied-by-a-copy": ("lm/transformer.py", "self.decoder.weight = self.encoder.weight",
                                   "self.decoder.weight = nn.Parameter(self.encoder.weight.detach().clone())"),
    "transformer-attention-dropout-in-eval": ("lm/transformer.py", "dropout_p=self.dropout if self.training else 0.0",
                                              "dropout_p=self.dropout"),
    "sliding-window-scores-a-stride-per-window": ("lm/transformer.py", "scored = offsets >= span - new[:, None]",
                                                  "scored = offsets >= span - stride"),
    "sliding-window-context-off-by-one": ("lm/transformer.py", "context.append((offsets + 1).expand_as(scored)",
                                          "context.append(offsets.expand_as(scored)"),
    # Issue 33: the two families wired into the scripts.
    "transformer-validated-without-the-overlap": ("lm/trainrun.py", 'sliding_evaluate(self.model, self.val_data, '
                                                  'self.cfg["val_dtype"])', 'sliding_evaluate(self.model, '
                                                  'self.val_data, self.cfg["val_dtype"], self.model.context_window)'),
    "transformer-evaluated-in-a-batch-of-columns": ("evaluate.py", "batch_size = 1 if stride else args.batch_size",
                                                    "batch_size = args.batch_size"),
    "transformer-evaluated-at-the-default-stride-only": ("evaluate.py", "sliding_evaluate(job.model, job.source, "
                                                         "args.dtype, job.stride)",
                                                         "sliding_evaluate(job.model, job.source, args.dtype)"),
    "generate-feeds-one-token-fewer-than-the-context": ("generate.py", "feed = [next_id] if window is None else "
                                                        "text[-window:]", "feed = [next_id] if window is None else "
                                                        "text[-window + 1:]"),
    "qrnn-memory-not-carried": ("lm/qrnn.py", "return torch.sigmoid(o) * c, (c[-1:], last)",
                                "return torch.sigmoid(o) * c, (torch.zeros_like(c[-1:]), last)"),
    "transformer-cache-not-refused": ("lm/scoring.py", "    if model.context_window is not None:\n        raise",
                                      "    if False:\n        raise"),
    "transformer-bptt-one-past-the-context-accepted": ("lm/config.py", "    if bptt > context:",
                                                       "    if bptt > context + 1:"),
}


# Folders of results/ that tests read (the trial configs that the budget presets must equal); the
# rest of results/ is not copied.
RESULTS_READ_BY_TESTS = {"budget-trials", "h200-2026-12-04"}


def skip_in_copy(folder, names):
    """shutil.copytree's ignore: what a mutant's copy of the tree leaves out."""
    if Path(folder) == ROOT / "results":
        return [n for n in names if n not in RESULTS_READ_BY_TESTS]
    return [n for n in names if n in {".git", "checkpoints", "__pycache__", ".pytest_cache", ".ruff_cache"}]


def run_mutant(name, path, old, new):
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=skip_in_copy)
        target = tree / path
        text = target.read_text()
        if text.count(old) != 1:
            return f"edit does not apply ({text.count(old)} matches in {path})"
        target.write_text(text.replace(old, new))
        # The wiring, precision and model-family tests first, where most mutants fail, then the rest.
        files = sorted(str(p.relative_to(tree)) for p in (tree / "tests").glob("test_*.py"))
        files.sort(key=lambda f: f not in ("tests/test_wiring.py", "tests/test_precision.py", "tests/test_families.py"))
        # The check that every mutant's text still matches fails on any mutated tree; leave it out.
        skip = ["--deselect", "tests/test_wiring.py::test_every_mutant_still_applies"]
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *skip, *files],
                                cwd=tree, capture_output=True, text=True, check=False)
        lines = result.stdout.strip().splitlines()
        failed = [line.split(" ")[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
        return f"caught by {(failed or lines[-1:] or ['?'])[0]}" if result.returncode else "SURVIVED"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run only the mutants whose names contain this (default: all)")
    args = p.parse_args(argv)
    survived = broken = 0
    for name, (path, old, new) in MUTANTS.items():
        if args.only not in name:
            continue
        t0 = time.time()
        verdict = run_mutant(name, path, old, new)
        survived += verdict == "SURVIVED"
        broken += verdict.startswith("edit")
        print(f"{name:40s} {verdict} ({time.time() - t0:.0f} s)", flush=True)
    return 2 if broken else 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
