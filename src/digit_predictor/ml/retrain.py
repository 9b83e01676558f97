"""Retrain the champion on people's corrections, gate the result, register it, maybe promote it.

python -m digit_predictor.ml.retrain [--promote] [--dry-run]
python -m digit_predictor.ml.retrain promote VERSION [--reason TEXT]
python -m digit_predictor.ml.retrain rollback [--reason TEXT]

Exit status: 0 done (promoted with --promote, registered as a candidate without it);
3 refused, nothing promoted (the gate said no, too few corrections, or none new since the
champion), the reason on the last line; 1 any other failure, with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import torch

from digit_predictor.db import Database, DatabaseUnavailable, registry
from digit_predictor.db.corrections import count_corrections, read_corrections
from digit_predictor.db.registry import ModelRecord, RegistryError
from digit_predictor.ml.batch import predict_proba
from digit_predictor.ml.card import GRAPH_NAME, ModelCard
from digit_predictor.ml.data import MnistDataError, default_data_dir, verify_files
from digit_predictor.ml.export import onnx_graph
from digit_predictor.ml.extra_digits import ExtraDigitsError
from digit_predictor.ml.feedback import FeedbackData, LabelledSet, build_feedback_data
from digit_predictor.ml.finetune import FinetuneConfig, ReplayData, finetune, replay_data
from digit_predictor.ml.gate import GateResult, gate_benchmarks, run_gate
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.label_guard import DEFAULT_TOP_K, GuardResult, plausible_labels
from digit_predictor.ml.serving import ModelLoadError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 3
DEFAULT_MIN_CORRECTIONS = 50
# Retraining reads every correction in batches and writes one row with the weights: more
# time than the api's 5 s statement timeout allows on a busy database.
STATEMENT_TIMEOUT_MS = 120_000


class Refused(Exception):
    """Nothing to promote: the reason is what the last line says."""


class RetrainError(RuntimeError):
    """Retraining cannot run (no champion, no data, broken weights...)."""


@dataclass
class HookContext:
    """What a post-fine-tune step may use: the corrections trained on and held out, the replay
    data, and the champion it started from."""

    feedback_train: LabelledSet
    feedback_holdout: LabelledSet
    replay: ReplayData
    champion: ModelRecord


class PostFinetuneHook(Protocol):
    """Runs on the fine-tuned challenger before the gate (e.g. re-fitting calibration or an
    out-of-distribution detector to the new weights). Returns what goes into the card under
    `card["post_finetune"][name]`; it may change the model's auxiliary state, not its weights'
    meaning. Raising fails the run (exit 1): a challenger without it must not be promoted."""

    name: str

    def __call__(self, model: torch.nn.Module, context: HookContext) -> dict[str, Any]: ...


@dataclass
class RefitTrust:
    """Re-fit calibration and the non-digit detector (ml/trust.py) to the challenger.

    Both read the CNN's features, which fine-tuning moves: the champion's fit would make the
    challenger's confidence and "not a digit" answers wrong even where its digits are right.
    """

    name: str = "trust"
    seed: int = 0
    per_generator: int = 1000
    data_dir: Path | None = None
    progress: bool = False

    def __call__(self, model: torch.nn.Module, context: HookContext) -> dict[str, Any]:
        from digit_predictor.ml.trust import fit_trust

        report = fit_trust(
            model,
            seed=self.seed,
            per_generator=self.per_generator,
            data_dir=self.data_dir,
            progress=self.progress,
        )
        return report.as_dict()


# The steps every retraining runs after fine-tuning; other modules add theirs here.
POST_FINETUNE_HOOKS: list[PostFinetuneHook] = []


def default_hooks(options: RetrainOptions) -> list[PostFinetuneHook]:
    """POST_FINETUNE_HOOKS, plus the trust re-fit unless a quick run turns it off."""
    hooks = list(POST_FINETUNE_HOOKS)
    if options.refit_trust:
        hooks.append(
            RefitTrust(
                seed=options.finetune.seed,
                per_generator=options.trust_per_generator,
                data_dir=options.data_dir,
                progress=options.progress,
            )
        )
    return hooks


@dataclass
class RetrainOptions:
    promote: bool = False
    dry_run: bool = False
    min_corrections: int = DEFAULT_MIN_CORRECTIONS
    top_k: int = DEFAULT_TOP_K  # label guard; 0 trusts every label
    data_dir: Path | None = None
    canvas_n: int = 2000
    gate_limit: int | None = None  # first N of each benchmark (quick runs, tests)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    progress: bool = True
    command: str = "python -m digit_predictor.ml.retrain"
    # Re-fit calibration and the non-digit detector on the challenger (minutes; tests skip it).
    refit_trust: bool = True
    trust_per_generator: int = 1000


@dataclass
class RetrainOutcome:
    version: str
    gate: GateResult
    promoted: bool
    registered: bool
    card: dict[str, Any]
    record: ModelRecord | None = None


def _say(message: str) -> None:
    print(message, flush=True)


def _weights_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def check_enough_corrections(db: Database, champion: ModelRecord, minimum: int) -> int:
    """Raise Refused when there are too few corrections or none since the champion's."""
    total = count_corrections(db)
    if total < minimum:
        raise Refused(
            f"only {total} corrections in the database, at least {minimum} are needed; "
            "nothing written"
        )
    through = _parse_time(champion.card.get("retraining", {}).get("feedback_through"))
    if through is not None and count_corrections(db, answered_after=through) == 0:
        raise Refused(
            f"no new corrections since the champion {champion.version} was trained "
            f"(its newest was answered at {through.isoformat()}); nothing written"
        )
    return total


def guard(model: torch.nn.Module, data: LabelledSet, top_k: int) -> tuple[LabelledSet, GuardResult]:
    result = plausible_labels(predict_proba(model, data.images), data.labels, top_k)
    return data.subset(result.keep), result


def challenger_card(
    champion: ModelRecord,
    *,
    version: str,
    weights: bytes,
    graph: bytes,
    options: RetrainOptions,
    feedback: FeedbackData,
    guard_train: GuardResult,
    guard_holdout: GuardResult,
    replay: ReplayData,
    steps: int,
    seconds: dict[str, float],
    history: list[dict[str, float]],
    gate: GateResult,
    post_finetune: dict[str, Any],
) -> dict[str, Any]:
    # The parent's description of the network and its input stays true; its results do not.
    parent = ModelCard.from_dict(
        {"version": champion.version, "architecture": champion.arch, **champion.card}
    )
    card = ModelCard(
        version=version,
        architecture=champion.arch,
        parent_version=champion.version,
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        weights_file=parent.weights_file,
        weights_bytes=len(weights),
        onnx_file=GRAPH_NAME,
        onnx_sha256=hashlib.sha256(graph).hexdigest(),
        parameter_count=parent.parameter_count,
        input=parent.input,
        normalisation=parent.normalisation,
        command=options.command,
        training_seconds=round(seconds["fine_tuning"], 1),
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        device="cpu",
        retraining={
            "feedback_through": (
                feedback.newest_feedback_at.isoformat() if feedback.newest_feedback_at else None
            ),
            "corrections": feedback.counts(),
            "label_guard": {
                "top_k": options.top_k,
                "train": guard_train.as_dict(),
                "holdout": guard_holdout.as_dict(),
            },
            "replay": replay.counts,
            "steps": steps,
            "config": _jsonable(dataclasses.asdict(options.finetune)),
            "history": history,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        },
        post_finetune=post_finetune,
        gate=gate.as_dict(),
    )
    return card.to_dict()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def retrain(
    db: Database,
    options: RetrainOptions,
    hooks: Sequence[PostFinetuneHook] = POST_FINETUNE_HOOKS,
    say: Callable[[str], None] = _say,
) -> RetrainOutcome:
    """One retraining run. Raises Refused (exit 3) or RetrainError (exit 1)."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    data_dir = options.data_dir or default_data_dir()
    verify_files(data_dir)  # fail before any work when MNIST is missing
    champion = registry.champion(db)
    if champion is None:
        raise RetrainError(
            "the registry has no champion; run `python -m digit_predictor.db migrate` first"
        )
    total = check_enough_corrections(db, champion, options.min_corrections)
    say(f"champion {champion.version}; {total} corrections in the database")

    mark = time.perf_counter()
    feedback = build_feedback_data(read_corrections(db))
    seconds["reading_and_preprocessing"] = time.perf_counter() - mark
    for name, count in feedback.counts().items():
        say(f"  {name.replace('_', ' ')}: {count}")

    try:
        base = Classifier.from_weights(
            champion.arch,
            registry.load_weights(db, champion.version),
            champion.card,
            origin=f"champion {champion.version}",
        ).model
    except (ModelLoadError, RegistryError) as exc:
        raise RetrainError(f"cannot load the champion: {exc}") from exc

    train_set, guard_train = guard(base, feedback.train, options.top_k)
    holdout_set, guard_holdout = guard(base, feedback.holdout, options.top_k)
    say(
        f"label guard (label among the champion's top {options.top_k}): "
        f"train kept {len(train_set)} of {len(feedback.train)}, "
        f"holdout kept {len(holdout_set)} of {len(feedback.holdout)}"
    )
    if len(train_set) < 1:
        raise Refused("no correction left to train on after the label guard; nothing written")

    mark = time.perf_counter()
    replay = replay_data(options.finetune, data_dir)
    benchmarks = gate_benchmarks(
        data_dir, canvas_n=options.canvas_n, limit=options.gate_limit, progress=options.progress
    )
    seconds["replay_and_benchmarks"] = time.perf_counter() - mark
    say(
        "replay: "
        + ", ".join(f"{k} {v}" for k, v in replay.counts.items())
        + f"; fine-tuning {options.finetune.steps_for(len(train_set))} steps"
    )

    result = finetune(
        base,
        train_set.images,
        train_set.labels,
        replay,
        options.finetune,
        progress=options.progress,
    )
    seconds["fine_tuning"] = result.seconds
    context = HookContext(train_set, holdout_set, replay, champion)
    post_finetune: dict[str, Any] = {}
    for hook in hooks:
        mark = time.perf_counter()
        post_finetune[hook.name] = hook(result.model, context)
        seconds[f"post_finetune_{hook.name}"] = time.perf_counter() - mark

    mark = time.perf_counter()
    gate = run_gate(
        base,
        result.model,
        holdout_set.images,
        holdout_set.labels,
        benchmarks,
        progress=options.progress,
    )
    seconds["gate"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started

    weights = _weights_bytes(result.model)
    graph = onnx_graph(result.model)  # what the api will serve, made while torch is here
    version = f"{champion.arch}-{hashlib.sha256(weights).hexdigest()[:12]}"
    card = challenger_card(
        champion,
        version=version,
        weights=weights,
        graph=graph,
        options=options,
        feedback=feedback,
        guard_train=guard_train,
        guard_holdout=guard_holdout,
        replay=replay,
        steps=result.steps,
        seconds=seconds,
        history=result.history,
        gate=gate,
        post_finetune=post_finetune,
    )
    say("")
    say(f"gate: champion {champion.version} vs challenger {version} (same data, same run)")
    say(gate.table())
    say(
        "time: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in seconds.items())
        + f" ({torch.get_num_threads()} threads)"
    )
    outcome = RetrainOutcome(
        version=version, gate=gate, promoted=False, registered=False, card=card
    )
    if options.dry_run:
        return outcome

    record = registry.register(
        db,
        version=version,
        parent_version=champion.version,
        arch=champion.arch,
        weights=weights,
        card=card,
        onnx=graph,
    )
    outcome.registered = True
    if not gate.passed:
        outcome.record = registry.reject(db, version, reason=gate.reason)
    elif options.promote:
        outcome.record = registry.promote(db, version, reason=gate.reason)
        outcome.promoted = True
    else:
        outcome.record = record
    return outcome


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser(
        prog="python -m digit_predictor.ml.retrain",
        description=(__doc__ or "").splitlines()[0],
        epilog="Exit status: 0 done, 3 refused (reason on the last line), 1 failure.",
    )
    parser.add_argument("--promote", action="store_true", help="promote when the gate passes")
    parser.add_argument("--dry-run", action="store_true", help="print the gate; write nothing")
    parser.add_argument("--min-corrections", type=int, default=DEFAULT_MIN_CORRECTIONS)
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help="train only on labels among the champion's top K digits (0: trust every label)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST raw dir ($MNIST_DIR)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--passes", type=float, default=defaults.passes)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--min-steps", type=int, default=defaults.min_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-lr", type=float, default=defaults.max_lr)
    parser.add_argument(
        "--replay-mnist", type=int, default=None, help="replay N MNIST digits (default: all)"
    )
    parser.add_argument("--no-replay-extra", action="store_true", help="no USPS/optdigits replay")
    parser.add_argument(
        "--replay-redrawn",
        type=int,
        default=defaults.replay_redrawn,
        help="MNIST digits redrawn with a uniform brush in the replay",
    )
    parser.add_argument("--canvas-n", type=int, default=2000, help="canvas benchmark size")
    parser.add_argument(
        "--gate-limit", type=int, default=None, help="first N of each benchmark (quick runs)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-refit-trust",
        action="store_true",
        help="keep the champion's calibration and non-digit detector (quick runs only: they "
        "were fitted to the champion's features)",
    )
    parser.add_argument(
        "--trust-per-generator",
        type=int,
        default=1000,
        help="non-digit drawings per generator for the trust re-fit",
    )
    sub = parser.add_subparsers(dest="action")
    promote = sub.add_parser("promote", help="make VERSION the champion (a person's decision)")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by hand")
    rollback = sub.add_parser("rollback", help="bring back the previous champion")
    rollback.add_argument("--reason", default="rolled back by hand")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace, command: str) -> RetrainOptions:
    return RetrainOptions(
        promote=args.promote,
        dry_run=args.dry_run,
        min_corrections=args.min_corrections,
        top_k=args.top_k,
        data_dir=args.data_dir,
        canvas_n=args.canvas_n,
        gate_limit=args.gate_limit,
        finetune=FinetuneConfig(
            seed=args.seed,
            threads=args.threads,
            passes=args.passes,
            max_steps=args.max_steps,
            min_steps=args.min_steps,
            batch_size=args.batch_size,
            max_lr=args.max_lr,
            replay_mnist=args.replay_mnist,
            replay_extra=not args.no_replay_extra,
            replay_redrawn=args.replay_redrawn,
        ),
        progress=not args.no_progress,
        command=command,
        refit_trust=not args.no_refit_trust,
        trust_per_generator=args.trust_per_generator,
    )


def _open_database() -> Database:
    from digit_predictor.config import get_settings

    settings = get_settings()
    return Database(
        settings.dsn,
        min_size=0,
        max_size=2,
        statement_timeout_ms=max(settings.db_statement_timeout_ms, STATEMENT_TIMEOUT_MS),
        connect_timeout_s=settings.db_connect_timeout_s,
    )


def run(args: argparse.Namespace, db: Database, command: str) -> int:
    if args.action == "promote":
        record = registry.promote(db, args.version, reason=args.reason)
        _say(f"{record.version} is the champion now")
        return EXIT_OK
    if args.action == "rollback":
        record = registry.rollback(db, reason=args.reason)
        _say(f"rolled back: {record.version} is the champion again")
        return EXIT_OK
    options = options_from_args(args, command)
    outcome = retrain(db, options, hooks=default_hooks(options))
    if options.dry_run:
        verdict = "would be promoted" if outcome.gate.passed else "would be refused"
        _say(f"dry run, nothing written: {outcome.version} {verdict}")
        if not outcome.gate.passed:
            raise Refused(outcome.gate.reason)
        return EXIT_OK
    if not outcome.gate.passed:
        raise Refused(f"{outcome.version} rejected: {outcome.gate.reason}")
    if outcome.promoted:
        _say(f"promoted {outcome.version}: {outcome.gate.reason}")
    else:
        _say(
            f"{outcome.version} passed the gate and waits as a candidate; promote it with "
            f"`python -m digit_predictor.ml.retrain promote {outcome.version}`"
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "digit_predictor.ml.retrain", *argv_list])
    db: Database | None = None
    try:
        db = _open_database()
        return run(args, db, command)
    except Refused as exc:
        print(f"refused: {exc}", flush=True)
        return EXIT_REFUSED
    except (
        RetrainError,
        RegistryError,
        DatabaseUnavailable,
        MnistDataError,
        ExtraDigitsError,
    ) as exc:
        # One line, even for the driver's multi-line messages: it is what a person reads.
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except Exception as exc:  # anything else: the traceback, then one clear line, exit 1
        traceback.print_exc()
        print(f"error: retraining failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if db is not None:
            db.close()


if __name__ == "__main__":
    raise SystemExit(main())
