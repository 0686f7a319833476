"""The training recipe: one readable loop over epochs, batches and BPTT chunks.

Everything a run needs to continue after a kill is in last.pt, written atomically at the end
of every epoch. Each epoch draws its shuffle and its dropout noise from (seed, epoch) alone, so
a resumed run replays exactly the epochs an uninterrupted one would have run.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from kit.config import CHOICES, ConfigError, changed_values, differences
from kit.errors import KitError
from kit.features import FEATURE_FORMAT, FIRST_RECORDED_FORMAT
from kit.metrics import evaluate
from kit.progress import bar_switch
from kit.toml_file import parse_toml, read_toml
from kit.train.checkpoint import load_checkpoint, save_checkpoint, unfit_checkpoint
from kit.train.data import EXTREME_TARGETS_ADVICE, Split, TrainData
from kit.train.losses import MaskedLoss
from kit.train.runs import RunFiles, epoch_line, say

SCHEDULES = CHOICES["train.schedule"]
# files.about's (epoch, batches trained, batches per epoch) of the epoch in training, which no
# checkpoint holds yet: what a stop loses (recipe.train_one puts it on the stop)
EPOCH_AT = "epoch_at"


class TrainingDiverged(KitError):
    """The loss or the validation score stopped being a number before any epoch scored."""


class TrainingOutOfMemory(KitError):
    """Training asked for more CPU memory than the process may have (its limit, the
    machine's): one line saying how much and what to lower, not torch's traceback (r303)."""


# torch's CPU allocator; CUDA's out-of-memory is the batch finder's (train.batch_size = 0)
CPU_ALLOCATION = re.compile(r"DefaultCPUAllocator: can't allocate memory: you tried to "
                            r"allocate (\d+) bytes")


def failed_allocation(exc: BaseException) -> int | None:
    """The bytes a failed CPU allocation asked for (0 where not said: a MemoryError), None for
    any other error."""
    if isinstance(exc, MemoryError):
        return 0
    if isinstance(exc, RuntimeError) and (found := CPU_ALLOCATION.search(str(exc))):
        return int(found[1])
    return None


def out_of_memory(asked: int, config: dict, model_config: dict | None,
                  files: RunFiles) -> TrainingOutOfMemory:
    """What ran out, with the settings that size training's memory and what is left of the
    run."""
    from kit.models import known_class

    train = config["train"]
    size = f" (it asked for {asked / 2**20:,.1f} MiB more)" if asked else ""
    model = model_config or config["model"]
    width = getattr(known_class(model.get("type")), "width_key", None)
    shape = ", ".join(f"model.{key} = {model[key]}" for key in (width, "layers")
                      if key and model.get(key) is not None)
    chunk = train["chunk"] or "0 (whole sequences)"
    batch = files.about.get("summary", {}).get("batch_size_found") or train["batch_size"]
    left = (f"{files.root} keeps its last finished epoch: --resume continues it where more "
            "memory is free" if files.last.exists() else
            f"{files.root} has no finished epoch: delete it, or --resume trains it from the "
            "start") if files.root.is_dir() else "no run folder was written"
    return TrainingOutOfMemory(
        f"training ran out of memory{size} with train.batch_size = {batch}, "
        f"train.chunk = {chunk}" + (f", {shape}" if shape else "") + ": lower "
        "train.batch_size, set a smaller train.chunk (the steps back-propagated at once), or "
        f"make the model narrower or shallower, in a new run; {left}")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """An epoch's shuffle of the n training sequences, drawn from (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def optimizer_steps(mask: np.ndarray, chunk: int, batch_size: int, seed: int,
                    epochs: int) -> list[int]:
    """The optimizer steps each epoch takes: one per chunk of a batch that holds a scored step.
    A chunk of only warm-up or padding steps takes none, and which chunks those are depends on
    the batch when sequences differ in length, so the count follows each epoch's shuffle."""
    n, steps = mask.shape
    learns = np.stack([mask[:, lo:lo + chunk].any(1) for lo in range(0, steps, chunk)], 1)
    starts = np.arange(0, n, batch_size)
    return [int(np.logical_or.reduceat(learns[order], starts, axis=0).sum())
            for order in (epoch_order(n, seed, epoch) for epoch in range(epochs))]


class OneCycleHeld(torch.optim.lr_scheduler.OneCycleLR):
    """OneCycleLR that holds its last step's rate once its steps are done. torch computes one
    more rate, from its cosine past the end where it rises again: the history recorded that as
    the last epoch's rate, 475x the rate the last step trained at (r279)."""

    def get_lr(self):
        if self.last_epoch < self.total_steps:
            return super().get_lr()
        self.last_epoch = self.total_steps - 1  # the last step's rate, computed as it was
        try:
            return super().get_lr()
        finally:
            self.last_epoch = self.total_steps


def make_schedule(optimizer, train: dict, steps: list[int]):
    """Per-step LambdaLR/OneCycle over `steps` (the optimizer steps of each epoch), or per-epoch
    ReduceLROnPlateau (stepped with the score). train.warmup_epochs ramps the rate up linearly
    for cosine and constant, and is onecycle's rising phase (pct_start); plateau has none."""
    name = train["schedule"]
    total = max(1, sum(steps))
    warmup = min(total - 1, sum(steps[:train["warmup_epochs"]]))

    def ramp(step: int) -> float:
        return (step + 1) / (warmup + 1)

    if name == "cosine":
        def factor(step: int) -> float:
            if step < warmup:
                return ramp(step)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "onecycle":
        if total < 4:  # no room for a cycle: its last step anneals to lr / 1e4, 1 of 1-3 steps
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        # each phase must span 2+ steps (torch divides by its length - 1)
        rise = min(max(warmup, 2), total - 2) / total
        return OneCycleHeld(optimizer, max_lr=train["lr"], total_steps=total, pct_start=rise)
    if name == "plateau":
        # stepped with sign * score: any strict gain is one, as in kit's own patience (a
        # relative threshold on a negative value, an error metric or a Pearson below 0,
        # counted a slightly worse score as better; an absolute one is not scale-free). torch
        # halves once the epochs without a gain exceed its patience: one less than ours, so
        # the halved rate trains before early stopping ends the run
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(1, train["patience"] // 2) - 1,
            threshold=0.0, threshold_mode="abs")
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: ramp(step) if step < warmup else 1.0)
    raise ConfigError(f"train.schedule {name!r} is not one of {SCHEDULES}")


def autocast_for(device: torch.device, amp: str):
    """bf16/fp16 autocast on CUDA when asked (auto = bf16 where supported); plain fp32 on CPU."""
    if device.type != "cuda" or amp == "off":
        return None
    # native bf16 only (compute capability 8+): is_bf16_supported() also says yes where it is
    # emulated (a T4), slow and without cuDNN's bf16 kernels, where fp16 + a scaler is right
    if amp in ("auto", "bf16") and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    if amp in ("auto", "fp16", "bf16"):
        return torch.float16
    raise ConfigError(f"train.amp {amp!r} is not one of {CHOICES['train.amp']}")


@torch.no_grad()
def predict(model, split: Split, batch_size: int, device: torch.device) -> np.ndarray:
    """Whole-sequence predictions (N, T, K) of a split, batch by batch."""
    model.eval()
    out = []
    for lo in range(0, len(split), batch_size):
        x = split.x[lo:lo + batch_size].to(device)
        y, _ = model(x, model.init_state(x.shape[0]))
        out.append(y.float().cpu().numpy())
    return np.concatenate(out)


def validate(model, data: TrainData, batch_size: int, device: torch.device):
    """The competition metric over full validation sequences; also the scored predictions."""
    preds = predict(model, data.valid, batch_size, device)
    mask = data.valid.mask.numpy()
    rows_pred = preds[mask]
    return evaluate(data.spec, data.valid.y.numpy()[mask], rows_pred), rows_pred


def divergence_advice(train: dict, data: TrainData) -> str:
    """What to change after a run diverged before any epoch scored: the training targets the
    float32 loss overflows on when there are some (no learning rate or clip helps then; the
    warning before training named them too), else the settings that tame a diverging run."""
    if data.extreme_targets:
        return (f"The training targets hold values the float32 loss overflows on: "
                f"{data.extreme_targets}; {EXTREME_TARGETS_ADVICE}")
    clip = train["grad_clip"]  # 0 is off
    clip_advice = (f"lower train.grad_clip (now {clip})" if clip > 0 else
                   "set train.grad_clip (now 0: off; e.g. 1.0)")
    return (f"Lower train.lr (now {train['lr']}), {clip_advice}, or look for extreme values in "
            "the data")


def _state_to(state, device):
    return [s.to(device) for s in state]


@dataclass(frozen=True)
class EpochEnd:
    """What a per-epoch callback learns: the epoch (1-based), its validation score, the best
    score so far (what best.pt holds, and what the run returns if it stops here; restored on
    resume) and whether the run ends after this epoch anyway (its epochs or patience spent)."""

    epoch: int
    score: float
    best_score: float
    last: bool


def trained_inputs(data: TrainData) -> dict:
    """What the arrays a run trains on are made of: its features' recipes and the spec's
    columns, lengths and protocol (recorded in last.pt, compared on --resume)."""
    from kit.features import arrays_spec

    return {"features": data.feature_set.computation(), "spec": arrays_spec(data.spec)}


def refuse_other_inputs(saved: dict | None, now: dict, last: Path) -> None:
    """A groups file, a spec or kit's own groups edited between a pause and --resume changed
    the features under the same config: the run went on training on other inputs (and,
    with as many columns, without a word). A last.pt from before the record is not checked."""
    if saved is None or saved == now:
        return
    what = [k for k in ("features", "spec") if saved.get(k) != now.get(k)]
    raise ConfigError(f"{last.parent}: the {' and the '.join(what)} this run trained on "
                      "changed since it started (a groups file, a spec file or kit's feature "
                      "groups edited): --resume would go on training on other inputs; restore "
                      "the file, or train a new run")


def replay_threads(trained_on: int) -> str:
    """How a resume gets back the thread count a run trained on: torch takes OMP_NUM_THREADS
    (train.threads 0) but caps it at this machine's cores, so a run of a larger machine cannot
    be replayed here (r301)."""
    import os

    cores = os.cpu_count() or 1
    if trained_on > cores:
        return (f"this machine has {cores} core(s); only a resume on one of at least "
                f"{trained_on} would")
    return (f"a resume without --jobs, with OMP_NUM_THREADS={trained_on} in its environment, "
            "would")


def feature_format_note(saved: dict, root: Path) -> str | None:
    """A run resumed by a kit of another FEATURE_FORMAT (an op's output changed between the
    pause and the resume): its remaining epochs train on this kit's features, so it cannot end
    where an uninterrupted run would. A note, not a refusal: the run is still a fine run (r286).
    A last.pt from before the record has no format: said as such."""
    recorded = saved.get("feature_format")
    if recorded == FEATURE_FORMAT:
        return None
    before = (f"under feature format {recorded!r}" if recorded is not None else
              "by a kit that recorded no feature format (format "
              f"{FIRST_RECORDED_FORMAT} or older)")
    return (f"note: {root} started {before}; this kit computes feature format "
            f"{FEATURE_FORMAT} (an op's output changed: docs/features.md, FEATURE_FORMAT), so "
            "its remaining epochs train on this kit's features and it will not end exactly "
            "where an uninterrupted run would: train a fresh run for an exact result")


def refuse_edited_config(saved_text: str | None, files: RunFiles) -> None:
    """config.toml edited by hand between a pause and --resume: the resumed epochs trained on
    other settings than the first (a cosine schedule of 4 epochs, then one of 8), a run no
    config describes; a model of another width failed as a checkpoint that "does not fit",
    whose advice (delete it) lost the epochs. A last.pt from before the record is not
    checked; comments, layout, the name and the description are no change."""
    if not isinstance(saved_text, str) or not files.config_path.is_file():
        return
    if _config_text(files) == saved_text:
        return
    now = read_toml(files.config_path, ConfigError)  # as read_config reads it (a BOM is fine)
    try:
        before = parse_toml(saved_text, f"{files.last}'s config", ConfigError)
    except ConfigError:
        before = {}  # (never written so: kit stores the text it read)
    changed = [key for key in differences(before, now) if key not in ("name", "description")]
    if changed:
        shown = changed_values(changed, before, now)
        more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
        raise ConfigError(f"{files.config_path} is not the config {files.last.name} was "
                          f"written with: {', '.join(shown[:8])}{more}: config.toml edited by "
                          "hand since the run started, or a last.pt of another run; --resume "
                          "replays the run as it started: put config.toml back as it was (or "
                          "the run's own last.pt), or train a new run with the new settings")


def _config_text(files: RunFiles) -> str:
    """config.toml's text as kit wrote it (UTF-8), a byte order mark an editor added left out;
    bytes that are not UTF-8 replaced (read_config names such a file before training)."""
    return files.config_path.read_bytes().decode("utf-8-sig", errors="replace")


def fit(config: dict, data: TrainData, model: torch.nn.Module, files: RunFiles, *,
        resume: bool = False, stop_after_epochs: int = 0, progress: bool = True,
        on_epoch: Callable[[EpochEnd], bool] | None = None) -> dict:
    """Train `model` as `config` (resolved) says, writing the run directory; returns metrics.

    on_epoch(EpochEnd), called after each scored epoch (its checkpoint written), may return
    True to stop the run there (a sweep's pruner); metrics then say "pruned": true."""
    train, seed = config["train"], config["seed"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if train["threads"] > 0:
        torch.set_num_threads(train["threads"])
    model.to(device)
    loss_fn = MaskedLoss(config.get("loss"), data.spec.n_outputs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"],
                                  weight_decay=train["weight_decay"])
    n, steps = len(data.train), data.train.x.shape[1]
    chunk = train["chunk"] or steps
    saved = load_checkpoint(files.last, ("model", "optimizer", "schedule", "epoch")) \
        if resume else None
    if saved is not None:  # first: an edited width then fails as an edit, not as last.pt
        refuse_edited_config(saved.get("config_toml"), files)
    config_text = _config_text(files) if files.config_path.is_file() else None
    if train["batch_size"] == 0:  # auto: the largest batch the GPU holds, found once
        from kit.train.batch_finder import find_batch_size

        # a resume trains the batches (and schedule steps) its start found, whatever the
        # device's memory holds now; config.toml keeps 0 (the same command resumes, and a
        # sweep's best file searches again on the next machine), metrics.json the size
        size = (saved or {}).get("batch_size") or find_batch_size(
            model, data.train.x.shape[2], chunk, n, device)
        train = {**train, "batch_size": size}
        files.about.setdefault("summary", {})["batch_size_found"] = size
    batches_per_epoch = math.ceil(n / train["batch_size"])
    schedule = make_schedule(optimizer, train, optimizer_steps(
        np.asarray(data.train.mask), chunk, train["batch_size"], seed, train["epochs"]))
    per_step_schedule = train["schedule"] != "plateau"
    amp_dtype = autocast_for(device, train["amp"])
    if device.type != "cuda" and train["amp"] in ("fp16", "bf16"):  # asked for by name: said
        say(f"note: train.amp = {train['amp']} applies on CUDA only: {files.root} trains in "
            f"float32 on {device.type}")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(train["ema"]))
           if train["ema"] > 0 else None)
    swa = AveragedModel(model) if train["swa_start"] > 0 else None
    writer = files.tensorboard() if train["tensorboard"] else None

    # scores are compared as "gain": the metric, negated when lower is better (mae, rmse)
    sign = 1.0 if data.spec.metric.higher_is_better else -1.0
    start_epoch, best, bad_epochs = 0, -math.inf, 0
    if saved is not None:
        refuse_other_inputs(saved.get("inputs"), trained_inputs(data), files.last)
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            if saved["scaler"] and scaler.is_enabled():  # a run started in bf16/fp32 saved {}
                scaler.load_state_dict(saved["scaler"])
            for averaged, key in ((ema, "ema"), (swa, "swa")):
                if averaged is not None:
                    averaged.load_state_dict(saved[key])
            start_epoch, best, bad_epochs = (saved["epoch"] + 1, saved["best"],
                                             saved["bad_epochs"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise unfit_checkpoint(files.last, exc) from None
        if saved.get("amp", str(amp_dtype)) != str(amp_dtype):
            say(f"note: {files.root} resumes in {amp_dtype or 'float32'} autocast; it trained "
                f"in {saved['amp'].replace('None', 'float32')} before, so it will not replay an "
                "uninterrupted run exactly")
        threads = torch.get_num_threads()  # (--jobs workers run on kit's share of the cores)
        if saved.get("threads", threads) != threads and device.type == "cpu":
            say(f"note: {files.root} resumes on {threads} CPU thread(s); it trained on "
                f"{saved['threads']} before, where float sums split differently, so it will not "
                f"replay an uninterrupted run exactly ({replay_threads(saved['threads'])})")
        if (note := feature_format_note(saved, files.root)) is not None:
            say(note)
        files.reopen_paused()  # only now: a last.pt that cannot resume leaves the pause as it was
        files.truncate_history(start_epoch)
        if saved.get("best_pending"):  # killed while moving the epoch's best into place
            files.promote_best(start_epoch)
    files.drop_pending_best()  # bests of epochs last.pt never recorded

    epochs_run, paused, pruned, diverged = 0, False, False, ""
    for epoch in range(start_epoch, train["epochs"]):
        if bad_epochs >= train["patience"]:
            break  # early stopping
        if stop_after_epochs and epochs_run >= stop_after_epochs:
            paused = True  # time-boxed session: `--resume` picks up here
            break
        started = time.perf_counter()
        torch.manual_seed(seed * 1_000_003 + epoch)  # this epoch's dropout noise
        order = epoch_order(n, seed, epoch)
        model.train()
        losses = []
        bar = tqdm(range(batches_per_epoch), desc=f"epoch {epoch + 1}/{train['epochs']}",
                   leave=False, **bar_switch(progress))
        # where a stop finds the run (r312: a Ctrl-C at batch 20 of 671 of the first epoch
        # said "before any run started"); its checkpoint comes only at the epoch's end
        files.about[EPOCH_AT] = (epoch + 1, 0, batches_per_epoch)
        for b in bar:
            index = torch.from_numpy(order[b * train["batch_size"]:(b + 1) * train["batch_size"]])
            x, y, mask = (t[index].to(device) for t in (data.train.x, data.train.y,
                                                         data.train.mask))
            state = _state_to(model.init_state(len(index)), device)
            for lo in range(0, steps, chunk):  # truncated BPTT: state carried, detached
                hi = lo + chunk
                if not mask[:, lo:].any():  # nothing scored from here on: nothing to learn
                    break
                autocast = torch.autocast(device.type, dtype=amp_dtype,
                                          enabled=amp_dtype is not None)
                if not mask[:, lo:hi].any():  # warm-up only: advance the state, learn nothing
                    with torch.no_grad(), autocast:  # (the state keeps its autocast dtype)
                        _, state = model(x[:, lo:hi], state)
                    continue
                with autocast:
                    pred, state = model(x[:, lo:hi], state)
                    loss = loss_fn(pred, y[:, lo:hi], mask[:, lo:hi])
                value = loss.item()
                if not math.isfinite(value):  # stop before the step spreads it into the weights
                    diverged = f"train loss {value} in batch {b + 1} of epoch {epoch + 1}"
                    break
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if train["grad_clip"] > 0:
                    scaler.unscale_(optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
                    if not scaler.is_enabled() and not math.isfinite(norm.item()):
                        # a finite loss with inf/NaN gradients: the step would poison the
                        # weights (an fp16 scaler skips such steps by design)
                        diverged = (f"gradient norm {norm.item()} in batch {b + 1} of epoch "
                                    f"{epoch + 1}")
                        break
                scaler.step(optimizer)
                scaler.update()
                if per_step_schedule:
                    schedule.step()
                if ema is not None:
                    ema.update_parameters(model)
                state = [s.detach() for s in state]
                losses.append(value)
                # Drop this chunk's graph now, not when the next forward rebinds the names: the
                # next forward then reuses its memory instead of faulting in fresh pages
                # (bench_train: 47 -> 60+ sequences/s on these VMs).
                del pred, loss
            del x, y, mask  # the same: the next batch's copies reuse this memory
            if diverged:
                break
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}" if losses else "-")
            files.about[EPOCH_AT] = (epoch + 1, b + 1, batches_per_epoch)
        if diverged:
            break  # the weights are those of the last finished epoch; last.pt is not touched
        if swa is not None and epoch + 1 >= train["swa_start"]:
            swa.update_parameters(model)

        scored = ema.module if ema is not None else model
        report, rows_pred = validate(scored, data, train["batch_size"], device)
        if not math.isfinite(report.score):
            diverged = f"validation score {report.score} after epoch {epoch + 1}"
        if not per_step_schedule and not diverged:
            schedule.step(sign * report.score)
        improved = sign * report.score > best
        if improved:
            best, bad_epochs = sign * report.score, 0
            files.save_best(scored, report, rows_pred, data, epoch + 1, pending=True)
        else:
            bad_epochs += 1
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                  "val_score": report.score, "val_per_target": report.per_target,
                  "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - started, "best": improved}
        files.append_history(record)
        if writer is not None:
            writer.add_scalar("val/score", report.score, epoch + 1)
            writer.add_scalar("train/loss", record["train_loss"] or 0.0, epoch + 1)
            writer.add_scalar("train/lr", record["lr"], epoch + 1)  # the schedule, as recorded
            for target, value in report.per_target.items():
                writer.add_scalar(f"val/{target}", value, epoch + 1)
        if progress:
            tqdm.write(epoch_line(record))
        save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else {},
            "swa": swa.state_dict() if swa is not None else {},
            "epoch": epoch, "best": best, "bad_epochs": bad_epochs,
            "batch_size": train["batch_size"], "amp": str(amp_dtype), "best_pending": improved,
            "threads": torch.get_num_threads(), "inputs": trained_inputs(data),
            "feature_format": FEATURE_FORMAT,  # the ops' outputs it trains on (resume compares)
            "config_toml": config_text,
        }, files.last)
        if improved:  # last.pt now records this epoch as the best: its files take their place
            files.promote_best(epoch + 1)
        files.about.pop(EPOCH_AT, None)  # kept in last.pt
        epochs_run += 1
        if diverged:
            break
        last = epoch + 1 >= train["epochs"] or bad_epochs >= train["patience"]
        if on_epoch is not None and on_epoch(EpochEnd(epoch + 1, report.score, sign * best, last)):
            pruned = True
            break

    finished, swa_won = not paused, None  # a pruned run is finished too: never resumed
    if finished and not pruned and swa is not None and swa.n_averaged.item() > 0:
        # the SWA average competes with the best epoch
        report, rows_pred = validate(swa.module, data, train["batch_size"], device)
        if sign * report.score > best:  # written aside, then moved into place: a failure
            # halfway left the average's best.pt beside the best epoch's predictions
            files.save_best(swa.module, report, rows_pred, data, epoch="swa", pending=True)
            files.promote_best("swa")
            swa_won = report
    if writer is not None:
        writer.close()
    metrics = files.write_metrics(finished=finished, sign=sign, swa=swa_won, pruned=pruned,
                                  diverged=diverged)
    if diverged and metrics["score"] is None:
        raise TrainingDiverged(f"{files.root}: training diverged ({diverged}) before any epoch "
                               f"scored, so there is no best.pt. {divergence_advice(train, data)}")
    if diverged:
        say(f"{files.root}: stopped, training diverged ({diverged}); best.pt keeps epoch "
            f"{metrics['best_epoch']}")
    return metrics
