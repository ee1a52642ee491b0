"""Protocol-driven batch generation: quotas in, gated cases on disk, resumable and shardable.

``generate(protocol)`` runs a ``RunPlan`` (see ``plan.py``) batch by batch:

1. sample the batch (``Synthesizer.generate`` with one explicit seed per case; extend-mode
   quotas vary their source scans with ``Synthesizer.variation``);
2. check every sample against the model's privacy index; a flagged case is resampled with
   the next attempt's seed (``on_flag: resample``), dropped, or fails the run;
3. write each accepted case (every format atomically), hash its files, then append its line
   to the manifest and fsync it.

Resume. The batch is the unit of computation: a run that was killed (even SIGKILL) and is
started again removes temporaries and files no manifest line lists, skips finished batches
and recomputes a partly written batch whole, writing only its missing cases. Sampling is
deterministic on one device for one batch composition, so the output equals an
uninterrupted run byte for byte, except the ``created`` timestamps of manifest lines and
``summary.json`` (timings).

Scale-out. Under ``torchrun`` each rank takes batches ``rank, rank + world, ...``, appends
to its own ``manifest.rank-<rank>.jsonl``, and rank 0 merges the parts in plan order at the
end, so the union equals the single-process output.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.digest import hash_output
from medsynth.distributed import DistContext, barrier, init_distributed, shutdown
from medsynth.errors import InputError, MedsynthError, PrivacyError, os_error_line
from medsynth.io.formats import get_format
from medsynth.io.scan import Scan
from medsynth.protocol.gate import Gate
from medsynth.protocol.insertion import Attempt, Inserter
from medsynth.protocol.manifest import MANIFEST, REJECTED, JsonlAppender, ManifestRecord, RejectedRecord, utc_now
from medsynth.protocol.plan import BatchPlan, CasePlan, QuotaPlan, RunPlan, validate_protocol
from medsynth.protocol.plan_output import push_target
from medsynth.protocol.progress import Progress
from medsynth.protocol.state import OutputFolder, ResumeState
from medsynth.protocol.summary import RunResult, Session, finalize, format_summary

if TYPE_CHECKING:
    from medsynth.pacs.push import Pusher

# RunResult and format_summary are defined in summary.py; named here too, as what a caller of
# generate() handles (the CLI imports them from here).
__all__ = ["RunResult", "format_summary", "generate"]

# Ranks only meet at barriers (no tensors are exchanged), so gloo serves every device. The
# long timeout lets the fastest rank wait for the slowest at the end; a rank that dies makes
# torchrun stop the others, so nothing hangs on it.
_BACKEND = "gloo"
_TIMEOUT = timedelta(hours=24)


class _Run:
    """One process's share of a run's batches (all of them, without torchrun)."""

    def __init__(
        self,
        plan: RunPlan,
        ctx: DistContext,
        folder: OutputFolder,
        state: ResumeState,
        progress: Progress,
        max_memory: int | str | None = None,
    ) -> None:
        self.plan = plan
        self.p = plan.protocol
        # The decode's budget: generate(max_memory=) (--max-memory) over sampler.max_memory.
        self.max_memory = max_memory if max_memory is not None else plan.protocol.sampler.max_memory
        self.ctx = ctx
        self.folder = folder
        self.progress = progress
        self.out = plan.output_dir
        self.quotas: dict[int, QuotaPlan] = {q.index: q for q in plan.quotas}
        self.quota_row = {q.index: row for row, q in enumerate(plan.quotas)}  # progress bar per quota
        self.cases = {c.case_id: c for c in plan.cases}
        self.gate: Gate | None = None
        self._synths: dict[Any, Any] = {}  # a Synthesizer per output grid, the model loaded when first needed
        self.state = state  # what earlier sessions finished; this session adds to it
        self.sources: dict[Path, Scan] = {}
        self.inserter = Inserter(plan, ctx.device)
        self.pusher: Pusher | None = None  # while run() runs, with output.push

    def my_batches(self) -> list[BatchPlan]:
        return [b for b in self.plan.batches if b.index % self.ctx.world_size == self.ctx.rank]

    def _pending(self, batch: BatchPlan) -> bool:
        return any(c.case_id not in self.state.done and c.case_id not in self.state.settled for c in batch.cases)

    def _source(self, q: QuotaPlan, index: int) -> Scan:
        """Extend-mode source ``index`` of quota ``q``, read once."""
        from medsynth.io import read_scan

        assert q.extend is not None
        path = q.extend.sources[index]
        if path not in self.sources:
            try:
                scan = read_scan(path, modality=q.modality)
            except MedsynthError as exc:
                raise InputError(f"{q.where}.extend.sources: {exc}") from None
            if scan.spatial_dims != self.plan.model.spatial_dims:
                raise InputError(
                    f"{q.where}.extend.sources: {path} is {scan.spatial_dims}D; model "
                    f"{self.plan.model.id} makes {self.plan.model.spatial_dims}D scans"
                )
            self.sources[path] = scan
        return self.sources[path]

    def _synthesizer(self, q: QuotaPlan) -> Any:
        """The Synthesizer of the quota's output grid; every grid shares one loaded model."""
        if q.grid not in self._synths:
            from medsynth.models.artifact import load_model
            from medsynth.sampling import Synthesizer

            first = next(iter(self._synths.values()), None)
            model = first.model if first is not None else load_model(self.plan.model.path, device=self.ctx.device)
            grid = q.grid.synthesizer_args() if q.grid is not None else {}
            s = self.p.sampler
            self._synths[q.grid] = Synthesizer(
                model,
                device=self.ctx.device,
                precision=s.precision,
                compile=s.compile,
                max_memory=self.max_memory,
                decode_window=s.decode_window,
                **grid,
            )
        return self._synths[q.grid]

    # -- the batch loop ------------------------------------------------------------------------

    def run(self) -> None:
        batches = [b for b in self.my_batches() if self._pending(b)]
        # Every source scan the pending batches need is read before any sampling, so an
        # unreadable one stops the run before it writes anything.
        for b in batches:
            q = self.quotas[b.quota]
            for c in b.cases if q.extend is not None else ():
                self._source(q, c.source or 0)
            if q.insert is not None and q.insert.catalog is not None:
                for c in {self.inserter.row(q, c): c for c in b.cases}.values():  # each row once
                    self.inserter.read_background(q, c)
        # Every grid's Synthesizer before any sampling: a max_memory too small to decode it stops here.
        largest: dict[int, int] = {}
        for b in batches:
            largest[b.quota] = max(largest.get(b.quota, 0), len(b.cases))
        for index, size in largest.items():
            self._synthesizer(self.quotas[index]).check_budget(size)
        if self.p.privacy.gate and batches:
            self.gate = Gate(self.plan.model.path, self.p.privacy, self.plan.weak_indexes)
        finished = self.state.done | self.state.settled
        totals = []
        for q in self.plan.quotas:
            ids = [c.case_id for b in self.my_batches() if b.quota == q.index for c in b.cases]
            totals.append((q.label, len(ids), sum(i in finished for i in ids)))
        self.progress.start(totals)
        with (
            JsonlAppender(self.folder.part(MANIFEST)) as manifest,
            JsonlAppender(self.folder.part(REJECTED)) as rejected,
            self._open_pusher() as self.pusher,  # output.push: each case as its manifest line is written
        ):
            for b in batches:
                self._run_batch(b, self._synthesizer(self.quotas[b.quota]), manifest, rejected)
            if self.pusher is not None:
                self.progress.event("push", **self.pusher.result.to_dict())

    def _open_pusher(self) -> AbstractContextManager[Pusher | None]:
        """The protocol's ``output.push`` (None without it), having pushed what earlier sessions finished.

        Each rank pushes the cases of its own batches and appends to its own part of the push record.
        """
        from medsynth.pacs.push import Pusher

        target = push_target(self.plan.source)
        if target is None:
            return nullcontext(None)
        pusher = Pusher(self.out, target, rank=self.ctx.rank if self.ctx.distributed else None)
        mine = {c.case_id for b in self.my_batches() for c in b.cases}
        try:
            for r in self.folder.manifest():  # finished before an interruption, perhaps not pushed
                if r.case_id in mine:
                    pusher.push_case(r)
        except BaseException:
            pusher.close()
            raise
        return pusher

    def _sample(self, synth: Any, q: QuotaPlan, cases: list[CasePlan], seeds: list[int]) -> list[Scan]:
        settings = {"num_inference_steps": q.steps, "guidance_scale": q.guidance_scale, "sampler": q.method}
        if q.extend is None:
            return synth.generate(
                [q.pathologies] * len(cases),
                [q.modality] * len(cases),
                seeds,
                batch_size=self.p.sampler.batch_size,
                **settings,
            )
        # Synthesizer.variation takes one source per call; a case's variation is seeded by its seed.
        out = []
        for c, s in zip(cases, seeds):
            source = self._source(q, c.source or 0)
            out += synth.variation(
                source, strength=q.extend.strength, pathology=q.pathologies, modality=q.modality, seed=s, **settings
            )
        return out

    def redraw(self, r: RejectedRecord) -> Scan:
        """A flagged attempt's sample (a generated background) again, from its recorded seed (alone)."""
        c = self.cases[r.case_id]
        q = self.quotas[c.quota]
        if q.insert is not None:  # only generated backgrounds are checked whole
            return self.inserter.generated_backgrounds(self._synthesizer(q), q, [r.seed])[0]
        return self._sample(self._synthesizer(q), q, [c], [r.seed])[0]

    def _attempt(self, synth: Any, q: QuotaPlan, cases: list[CasePlan], seeds: list[int]) -> list[Attempt]:
        if q.insert is not None:
            return self.inserter.attempt(synth, q, cases, seeds, self.gate)
        scans = self._sample(synth, q, cases, seeds)
        verdicts = self.gate.check(scans, q.group) if self.gate else [{"gate": False}] * len(cases)
        return [Attempt(scan, verdict) for scan, verdict in zip(scans, verdicts)]

    def _run_batch(self, batch: BatchPlan, synth: Any, manifest: JsonlAppender, rejected: JsonlAppender) -> None:
        q = self.quotas[batch.quota]
        privacy = self.p.privacy
        accepted: list[tuple[CasePlan, Attempt, int, int]] = []
        todo, attempt = list(batch.cases), 0
        while todo:
            seeds = [c.seed(self.p.seed, attempt) for c in todo]
            retry = []
            for c, a, seed in zip(todo, self._attempt(synth, q, todo, seeds), seeds):
                if a.flagged is None:
                    accepted.append((c, a, seed, attempt))
                    continue
                verdict = a.verdict()
                final = privacy.on_flag != "resample" or attempt + 1 >= privacy.max_attempts
                self._reject(rejected, c, seed, attempt, verdict, final, a.reject_kind())
                if privacy.on_flag == "fail":
                    what = "training lesion" if a.flagged == "lesion" else "training scan"
                    raise PrivacyError(
                        f"case {c.case_id} (seed {seed}) is too close to {what} {verdict.get('nearest')} "
                        f"(score {verdict['score']:.4f} > threshold {verdict['threshold']:.4f}) and "
                        f"privacy.on_flag is fail; see {self.out / REJECTED}"
                    )
                if not final:
                    retry.append(c)
            todo, attempt = retry, attempt + 1
        for c, a, seed, attempt in sorted(accepted, key=lambda item: item[0].position):
            if c.case_id in self.state.done:  # written before an interruption: the batch was recomputed whole
                continue
            record = self._write_case(c, q, a, seed, attempt)
            manifest.append(record)
            if self.pusher is not None:  # after the manifest line: only complete cases are pushed
                self.pusher.push_case(record)
            self.state.done.add(c.case_id)
            self.progress.case(self.quota_row[q.index], c.case_id)

    def _reject(
        self,
        rejected: JsonlAppender,
        c: CasePlan,
        seed: int,
        attempt: int,
        verdict: dict[str, Any],
        final: bool,
        kind: str | None = None,
    ) -> None:
        if final:
            self.state.settled.add(c.case_id)
        self.progress.event(
            "privacy-flag", case_id=c.case_id, attempt=attempt, final=final, **({"kind": kind} if kind else {})
        )
        if (c.case_id, attempt) in self.state.rejected_keys:  # recorded before an interruption
            return
        self.state.rejected_keys.add((c.case_id, attempt))
        rejected.append(
            RejectedRecord(
                case_id=c.case_id,
                pathology=c.pathology,
                modality=c.modality,
                seed=seed,
                attempt=attempt,
                final=final,
                action=self.p.privacy.on_flag if final else "resample",
                privacy=verdict,
                created=utc_now(),
                kind=kind,
            )
        )

    def _write_case(self, c: CasePlan, q: QuotaPlan, a: Attempt, seed: int, attempt: int) -> ManifestRecord:
        from medsynth.io import write_scan
        from medsynth.models.artifact import load_config

        scan = a.scan
        scan.metadata["case_id"] = c.case_id
        files: dict[str, str] = {}
        hashes: dict[str, str | dict[str, str]] = {}
        body_part = load_config(self.plan.model.path).body_part  # config.json only, small: read per case
        for fmt in self.p.output.formats:
            # Every format names the model and the case and says synthetic. DICOM patient, study
            # and series ids derive from this namespace, the case id and its seed: two protocols
            # never share them, and a rerun of the same protocol rewrites the same ones; the
            # study date is the run's start, recorded once in the output folder.
            written = write_scan(
                scan,
                get_format(fmt).output_file(self.out, c.case_id),
                fmt,
                case_id=c.case_id,
                uid_namespace=self.plan.source.sha256,
                seed=seed,
                model=self.plan.model.id,
                pathology=c.pathology,
                body_part=body_part,
                created=self.folder.started(),
            )
            files[fmt] = written.relative_to(self.out).as_posix()
            hashes[fmt] = hash_output(written)
        extra: dict[str, Any] = {}
        if q.insert is not None:  # the mask, SEG and outline after the scan: the SEG refers to its series
            self.inserter.write_files(self.out, c, q, a, files, hashes)
            extra = self.inserter.record_fields(q, a)
        return ManifestRecord(
            case_id=c.case_id,
            pathology=c.pathology,
            modality=c.modality,
            seed=seed,
            attempt=attempt,
            files=files,
            sha256=hashes,
            model={"id": self.plan.model.id, "sha256": self.folder.model_sha},
            protocol_sha256=self.plan.source.sha256,
            # A dataset background was not sampled; the lesion's sampler is in ``insert``.
            sampler=None
            if a.row is not None
            else {**q.sampler_settings(self.p.sampler.batch_size), **self.p.sampler.hashed()},
            privacy=a.privacy,
            created=utc_now(),
            # The source's index in the quota's source list, never its path (paths can identify).
            extend=None if q.extend is None else {"source_index": c.source, "strength": q.extend.strength},
            grid=None if q.grid is None else q.grid.record(scan.shape, scan.spacing),
            **extra,
        )


def generate(
    protocol: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: Progress | None = None,
    max_memory: int | str | None = None,
) -> RunResult:
    """Generate the cases a protocol asks for, gated, into its output folder (resuming if cut short).

    Args:
        protocol: the protocol YAML file.
        out: output folder overriding the protocol's ``output.dir``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        force: discard an existing run in the output folder (of this or another protocol) and
            start over.
        progress: where progress goes (``progress.RichProgress``, ``JsonProgress``; default none).
        max_memory: the decode's memory budget (bytes or ``"4GB"``), overriding the protocol's
            ``sampler.max_memory``; default half the free memory (``medsynth.sampling.memory``).

    Returns:
        The run's summary (rank 0; other ranks of a torchrun job get their own partial view).

    Raises:
        ProtocolError: the protocol does not validate (nothing is written).
        InputError: the output folder belongs to another run (without ``force``), or a source scan
            cannot be read.
        MachineError: disk full, permission denied, a read-only or vanished output folder, an
            I/O error (nothing finished is lost: the same call again resumes).
        PrivacyError: the privacy gate failed the run (``on_flag: fail``, a flagged rate
            significantly above 1 - quantile, or a case flagged on every attempt). The outputs and
            the report are still written, except ``dataset.json``.

    Example:
        >>> result = generate("protocols/demo.yaml", out="demo-output")   # doctest: +SKIP
        >>> result.summary["written"]                                     # doctest: +SKIP
    """
    from medsynth.sampling.memory import parse_memory

    budget = parse_memory(max_memory)  # a bad value is refused before the protocol is even read
    plan = validate_protocol(protocol, out=out)
    try:
        result = _execute(plan, device, force, progress or Progress(), budget)
    except OSError as exc:  # a write site that did not name its file: the machine's fault, one line
        raise os_error_line(exc, plan.output_dir, output=True) from None
    if not result.passed:
        files = result.summary["files"]
        reports = [str(plan.output_dir / files[k]) for k in ("privacy_report", "lesion_privacy_report") if k in files]
        raise PrivacyError(
            "privacy gate failed the run: "
            + "; ".join(result.summary["privacy"]["reasons"])
            + f" (report: {', '.join(reports)}; dataset.json and labels.csv were not written)",
            result=result,
        )
    return result


def _execute(plan: RunPlan, device: str, force: bool, progress: Progress, max_memory: int | None = None) -> RunResult:
    """Run ``plan`` in this process (one rank of a torchrun job, or everything)."""
    from medsynth.models.artifact import model_sha256

    ctx = init_distributed(device, backend=_BACKEND, timeout=_TIMEOUT)
    try:
        session = Session(device=str(ctx.device), world_size=ctx.world_size, started=time.monotonic())
        folder = OutputFolder(plan, ctx, model_sha256(plan.model.path))
        if ctx.is_main:
            folder.prepare(force)
        barrier(ctx)
        run = _Run(plan, ctx, folder, folder.resume_state(), progress, max_memory)
        gate_failure = None
        try:
            run.run()
        except PrivacyError as exc:
            if ctx.distributed:
                raise  # torchrun stops the other ranks; a rerun finds the same case and fails again
            gate_failure = str(exc)
        finally:
            progress.close()
        barrier(ctx)
        if not ctx.is_main:
            return RunResult(plan.output_dir, {"rank": ctx.rank, "privacy": {}})
        return finalize(plan, folder, session, gate=run.gate, redraw=run.redraw, gate_failure=gate_failure)
    finally:
        shutdown(ctx)
