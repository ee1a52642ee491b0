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

import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from medsynth import __version__
from medsynth.errors import InputError, MedsynthError, PrivacyError
from medsynth.io.atomic import TMP_PREFIX, atomic_write_text, fsync_path, remove_stale_temporaries
from medsynth.io.scan import Scan
from medsynth.protocol import manifest as mf
from medsynth.protocol.plan import BatchPlan, CasePlan, QuotaPlan, RunPlan, validate_protocol
from medsynth.protocol.progress import Progress

# Where each format goes, relative to the output folder (DICOM: one folder per case).
OUTPUT_PATHS = {"dicom": "dicom/{case_id}", "nifti": "nifti/{case_id}.nii.gz", "png": "png/{case_id}.png"}
# Which written format a MONAI datalist points at, in order of preference.
DATALIST_FORMATS = ("nifti", "dicom", "png")


@dataclass
class RunResult:
    """What a run produced; ``summary`` is also written to ``summary.json``."""

    output_dir: Path
    summary: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not self.summary["privacy"].get("failed", False)


@dataclass
class _Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    _group: bool = field(default=False, repr=False)

    @classmethod
    def from_env(cls) -> "_Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def __enter__(self) -> "_Dist":
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                # gloo on every device: ranks only meet at barriers, no tensors are exchanged. The
                # long timeout lets the fastest rank wait for the slowest at the end; a rank that
                # dies makes torchrun stop the others, so nothing hangs on it.
                dist.init_process_group("gloo", timeout=timedelta(hours=24))
                self._group = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def resolve_device(device: str, local_rank: int = 0) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; under torchrun ``cuda`` means this rank's GPU."""
    import torch

    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if device == "cuda":
            return f"cuda:{local_rank % torch.cuda.device_count()}"
        return device
    raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N")


def _finite(value: Any) -> Any:
    """``nan``/``inf`` -> ``None``: manifest lines are strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Gate:
    """The model's privacy index behind the two calls the runner needs."""

    def __init__(self, model_dir: Path, quantile: float, alpha: float):
        from medsynth.privacy.calibration import flagged_rate_test
        from medsynth.privacy.index import load_index_for_model

        self.index = load_index_for_model(model_dir)
        self.quantile = quantile
        self.alpha = alpha
        self._rate_test = flagged_rate_test

    def check(self, scans: list[Scan], group: str) -> list[dict[str, Any]]:
        """One verdict per scan, as a JSON-ready dict (``gate: true``; non-finite numbers -> null)."""
        verdicts = self.index.check(scans, [group] * len(scans), quantile=self.quantile)
        return [{"gate": True, **{k: _finite(v) for k, v in v.to_dict().items()}} for v in verdicts]

    def rate_test(self, n_flagged: int, n: int) -> tuple[float, bool]:
        pvalue, failed = self._rate_test(n_flagged, n, self.quantile, alpha=self.alpha)
        return float(pvalue), bool(failed)


class _Run:
    """One process's share of a run (everything, without torchrun)."""

    def __init__(self, plan: RunPlan, dist: _Dist, device: str, force: bool, progress: Progress):
        self.plan = plan
        self.p = plan.protocol
        self.dist = dist
        self.device = device
        self.force = force
        self.progress = progress
        self.out = plan.output_dir
        self.quotas: dict[int, QuotaPlan] = {q.index: q for q in plan.quotas}
        self.quota_row = {q.index: row for row, q in enumerate(plan.quotas)}  # progress bar per quota
        self.gate: _Gate | None = None
        self._synth: Any = None  # the Synthesizer, loaded when first needed
        self.position = {c.case_id: c.position for c in plan.cases}
        self.model_sha = ""
        self.done: set[str] = set()
        self.settled: set[str] = set()  # finally rejected (dropped, or out of attempts)
        self.rejected_keys: set[tuple[str, int]] = set()
        self.sources: dict[Path, Scan] = {}
        self.t0 = time.monotonic()

    # -- set-up ----------------------------------------------------------------------------------

    def _part(self, name: str) -> Path:
        return self.out / (name if self.dist.world == 1 else mf.rank_part(name, self.dist.rank))

    def _all_parts(self, name: str) -> list[Path]:
        stem, ext = name.rsplit(".", 1)
        return [self.out / name, *sorted(self.out.glob(f"{stem}.rank-*.{ext}"))]

    def _read_all(self, name: str, repair: bool = False) -> list[dict[str, Any]]:
        return [r for p in self._all_parts(name) for r in mf.read_jsonl(p, repair=repair)]

    def _run_record(self) -> dict[str, Any]:
        return {
            "medsynth_version": __version__,
            "protocol": {"name": self.p.name, "sha256": self.plan.source.sha256},
            "plan_sha256": self.plan.plan_sha256,
            "model": {"id": self.plan.model.id, "sha256": self.model_sha},
        }

    def _mismatch(self, run: dict[str, Any]) -> str | None:
        mine = self._run_record()
        if run.get("protocol", {}).get("sha256") != mine["protocol"]["sha256"]:
            return (
                f"was made by another protocol (protocol_sha256 {str(run.get('protocol', {}).get('sha256'))[:12]}..., "
                f"this one is {mine['protocol']['sha256'][:12]}...)"
            )
        if run.get("model", {}).get("sha256") != self.model_sha:
            return "was made with other model weights (model sha256 differs)"
        if run.get("plan_sha256") != mine["plan_sha256"]:
            return "was made from another plan (a dataset the protocol names has changed)"
        return None

    def _wipe(self) -> None:
        """Remove a previous run's outputs (``--force``): its format folders and its run files."""
        mf.remove_unlisted(self.out, set())
        for name in mf.RUN_OUTPUTS:
            for path in self._all_parts(name) if name.endswith(".jsonl") else [self.out / name]:
                if path.exists():
                    path.unlink()
        fsync_path(self.out)

    def prepare_output(self) -> None:
        """Rank 0: refuse a foreign folder, start over on --force, clean up after a crash."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: is a file; the output must be a folder")
        out.mkdir(parents=True, exist_ok=True)
        run = mf.read_run_file(out)
        if run is None:
            foreign = sorted(e.name for e in out.iterdir() if not e.name.startswith(TMP_PREFIX))
            if foreign:
                raise InputError(
                    f"{out}: is not empty and holds no medsynth run (found {', '.join(foreign[:3])}"
                    f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty output folder with --out"
                )
        else:
            why = self._mismatch(run)
            if why and not self.force:
                raise InputError(
                    f"{out}: {why}; use another --out folder, or --force to delete that run's outputs and start over"
                )
            if self.force:
                self._wipe()
        remove_stale_temporaries(out)
        records = self._read_all(mf.MANIFEST, repair=True)
        self._read_all(mf.REJECTED, repair=True)
        missing = [rel for rel in sorted(mf.listed_paths(records)) if not (out / rel).exists()]
        if missing:
            raise InputError(
                f"{out}: the manifest lists files that are gone ({', '.join(missing[:3])}); "
                "restore them, or start over with --force"
            )
        mf.remove_unlisted(out, mf.listed_paths(records))
        if not (out / mf.RUN_FILE).exists():
            mf.write_json(out / mf.RUN_FILE, self._run_record())

    def load_state(self) -> None:
        records = self._read_all(mf.MANIFEST)
        unknown = sorted({r.get("case_id") for r in records} - set(self.position), key=str)
        if unknown:
            raise InputError(
                f"{self.out / mf.MANIFEST}: lists cases this protocol does not plan ({unknown[:3]}); "
                "start over with --force"
            )
        self.done = {r["case_id"] for r in records}
        for r in self._read_all(mf.REJECTED):
            self.rejected_keys.add((r["case_id"], int(r["attempt"])))
            if r.get("final"):
                self.settled.add(r["case_id"])

    def my_batches(self) -> list[BatchPlan]:
        return [b for b in self.plan.batches if b.index % self.dist.world == self.dist.rank]

    def _pending(self, batch: BatchPlan) -> bool:
        return any(c.case_id not in self.done and c.case_id not in self.settled for c in batch.cases)

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

    def _synthesizer(self) -> Any:
        if self._synth is None:
            from medsynth.models.artifact import load_model
            from medsynth.sampling import Synthesizer

            self._synth = Synthesizer(load_model(self.plan.model.path, device=self.device), device=self.device)
        return self._synth

    # -- the batch loop ------------------------------------------------------------------------

    def run(self) -> None:
        batches = [b for b in self.my_batches() if self._pending(b)]
        # Every source scan the pending batches need is read before any sampling, so an
        # unreadable one stops the run before it writes anything.
        for b in batches:
            q = self.quotas[b.quota]
            for c in b.cases if q.extend is not None else ():
                self._source(q, c.source or 0)
        if self.p.privacy.gate and batches:
            self.gate = _Gate(self.plan.model.path, self.p.privacy.quantile, self.p.privacy.alpha)
        totals = []
        for q in self.plan.quotas:
            ids = [c.case_id for b in self.my_batches() if b.quota == q.index for c in b.cases]
            totals.append((self._label(q), len(ids), sum(i in self.done or i in self.settled for i in ids)))
        self.progress.start(totals)
        with mf.JsonlAppender(self._part(mf.MANIFEST)) as manifest, mf.JsonlAppender(self._part(mf.REJECTED)) as rejected:
            for b in batches:
                self._run_batch(b, self._synthesizer(), self.gate, manifest, rejected)

    def _label(self, q: QuotaPlan) -> str:
        return q.group if q.extend is None else f"{q.group} (extend)"

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

    def _run_batch(self, batch: BatchPlan, synth: Any, gate: _Gate | None, manifest: Any, rejected: Any) -> None:
        q = self.quotas[batch.quota]
        privacy = self.p.privacy
        accepted: list[tuple[CasePlan, Scan, int, int, dict[str, Any]]] = []
        todo, attempt = list(batch.cases), 0
        while todo:
            seeds = [c.seed(self.p.seed, attempt) for c in todo]
            scans = self._sample(synth, q, todo, seeds)
            verdicts = gate.check(scans, q.group) if gate else [{"gate": False}] * len(todo)
            retry = []
            for c, scan, seed, verdict in zip(todo, scans, seeds, verdicts):
                if not verdict["gate"] or verdict["passed"]:
                    accepted.append((c, scan, seed, attempt, verdict))
                    continue
                final = privacy.on_flag != "resample" or attempt + 1 >= privacy.max_attempts
                self._reject(rejected, c, seed, attempt, verdict, final)
                if privacy.on_flag == "fail":
                    raise PrivacyError(
                        f"case {c.case_id} (seed {seed}) is too close to training scan {verdict.get('nearest')} "
                        f"(score {verdict['score']:.4f} > threshold {verdict['threshold']:.4f}) and "
                        f"privacy.on_flag is fail; see {self.out / mf.REJECTED}"
                    )
                if not final:
                    retry.append(c)
            todo, attempt = retry, attempt + 1
        for c, scan, seed, attempt, verdict in sorted(accepted, key=lambda a: a[0].position):
            if c.case_id in self.done:  # written before an interruption: the batch was recomputed whole
                continue
            manifest.append(self._write_case(c, q, scan, seed, attempt, verdict))
            self.done.add(c.case_id)
            self.progress.case(self.quota_row[q.index], c.case_id)

    def _reject(self, rejected: Any, c: CasePlan, seed: int, attempt: int, verdict: dict[str, Any], final: bool) -> None:
        if final:
            self.settled.add(c.case_id)
        self.progress.event("privacy-flag", case_id=c.case_id, attempt=attempt, final=final)
        if (c.case_id, attempt) in self.rejected_keys:  # recorded before an interruption
            return
        self.rejected_keys.add((c.case_id, attempt))
        rejected.append(
            {
                "case_id": c.case_id,
                "pathology": c.pathology,
                "modality": c.modality,
                "seed": seed,
                "attempt": attempt,
                "final": final,
                "action": self.p.privacy.on_flag if final else "resample",
                "privacy": verdict,
                "created": _now(),
            }
        )

    def _write_case(
        self, c: CasePlan, q: QuotaPlan, scan: Scan, seed: int, attempt: int, verdict: dict[str, Any]
    ) -> dict[str, Any]:
        from medsynth.io import write_scan

        scan.metadata["case_id"] = c.case_id
        files: dict[str, str] = {}
        hashes: dict[str, Any] = {}
        for fmt in self.p.output.formats:
            # DICOM UIDs derive from the case id and this namespace: two studies never share
            # UIDs, and a rerun of the same protocol rewrites the same ones.
            written = write_scan(
                scan,
                self.out / OUTPUT_PATHS[fmt].format(case_id=c.case_id),
                fmt,
                case_id=c.case_id,
                uid_namespace=self.plan.source.sha256,
            )
            files[fmt] = written.relative_to(self.out).as_posix()
            hashes[fmt] = mf.hash_output(written)
        record: dict[str, Any] = {
            "case_id": c.case_id,
            "pathology": c.pathology,
            "modality": c.modality,
            "seed": seed,
            "attempt": attempt,
            "files": files,
            "sha256": hashes,
            "model": {"id": self.plan.model.id, "sha256": self.model_sha},
            "protocol_sha256": self.plan.source.sha256,
            "sampler": q.sampler_settings(self.p.sampler.batch_size),
            "privacy": verdict,
            "created": _now(),
        }
        if q.extend is not None:
            # The source's index in the quota's source list, never its path (paths can identify).
            record["extend"] = {"source_index": c.source, "strength": q.extend.strength}
        return record

    # -- the end ---------------------------------------------------------------------------------

    def _merge(self, name: str, key: Any) -> list[dict[str, Any]]:
        """Rank parts + main file -> the main file in plan order (atomically); parts removed."""
        records: dict[Any, dict[str, Any]] = {}
        for r in self._read_all(name):
            records.setdefault(key(r), r)
        ordered = sorted(records.values(), key=key)
        atomic_write_text(self.out / name, "".join(mf.dumps(r) + "\n" for r in ordered))
        for part in self._all_parts(name)[1:]:
            part.unlink()
        fsync_path(self.out)
        return ordered

    def finalize(self, gate_failure: str | None = None) -> RunResult:
        """Rank 0: merge the manifest, test the flagged rate, write the report, datalist and summary."""
        records = self._merge(mf.MANIFEST, lambda r: self.position[r["case_id"]])
        rejected = self._merge(mf.REJECTED, lambda r: (self.position[r["case_id"]], int(r["attempt"])))
        privacy = self._privacy_summary(records, rejected, gate_failure)
        written = {r["case_id"] for r in records}
        finally_rejected = {r["case_id"]: r["action"] for r in rejected if r["final"]}
        quotas = []
        for q in self.plan.quotas:
            ids = [c.case_id for b in self.plan.batches if b.quota == q.index for c in b.cases]
            quotas.append(
                {
                    "quota": q.where,
                    "class": q.group,
                    "requested": q.count,
                    "written": sum(i in written for i in ids),
                    "dropped": sum(finally_rejected.get(i) == "drop" for i in ids),
                    "out_of_attempts": sum(finally_rejected.get(i) == "resample" for i in ids),
                    **({"extend_strength": q.extend.strength} if q.extend else {}),
                }
            )
        failed = privacy.get("failed", False)
        if not failed:
            self._write_datalist(records)
        elapsed = time.monotonic() - self.t0
        summary = {
            "protocol": {"name": self.p.name, "sha256": self.plan.source.sha256},
            "model": {"id": self.plan.model.id, "sha256": self.model_sha},
            "output_dir": str(self.out),
            "formats": list(self.p.output.formats),
            "requested": sum(q.count for q in self.plan.quotas),
            "written": len(records),
            "quotas": quotas,
            "privacy": privacy,
            "files": {
                "manifest": mf.MANIFEST,
                "datalist": None if failed else mf.DATASET,
                "rejected": mf.REJECTED,
                **({"privacy_report": "privacy_report.html"} if privacy.get("report") else {}),
            },
            "device": self.device,
            "world_size": self.dist.world,
            "seconds_this_session": round(elapsed, 2),
            "finished": _now(),
        }
        mf.write_json(self.out / mf.SUMMARY, summary)
        return RunResult(self.out, summary)

    def _privacy_summary(
        self, records: list[dict[str, Any]], rejected: list[dict[str, Any]], gate_failure: str | None
    ) -> dict[str, Any]:
        pv = self.p.privacy
        if not pv.gate:
            return {"gate": False, "note": "privacy gate off (privacy.gate: false): cases were not checked"}
        gate = self.gate or _Gate(self.plan.model.path, pv.quantile, pv.alpha)
        n_checked = len(records) + len(rejected)
        n_flagged = len(rejected)
        pvalue, rate_failed = gate.rate_test(n_flagged, n_checked) if n_checked else (1.0, False)
        out_of_attempts = [r["case_id"] for r in rejected if r["final"] and r["action"] == "resample"]
        reasons = []
        if gate_failure:
            reasons.append(gate_failure)
        if rate_failed:
            reasons.append(
                f"{n_flagged} of {n_checked} samples were flagged, significantly more than the "
                f"{1 - pv.quantile:.1%} expected by chance (binomial p={pvalue:.3g} < alpha={pv.alpha})"
            )
        if out_of_attempts:
            reasons.append(
                f"{len(out_of_attempts)} case(s) were flagged on every attempt (max_attempts {pv.max_attempts}) "
                f"({', '.join(out_of_attempts[:3])}{', ...' if len(out_of_attempts) > 3 else ''})"
            )
        report = self._write_privacy_report(gate, records, rejected)
        return {
            "gate": True,
            "quantile": pv.quantile,
            "on_flag": pv.on_flag,
            "checked": n_checked,
            "flagged": n_flagged,
            "flagged_rate": round(n_flagged / n_checked, 6) if n_checked else 0.0,
            "expected_rate": round(1 - pv.quantile, 6),
            "pvalue": pvalue,
            "alpha": pv.alpha,
            "failed": bool(reasons),
            "reasons": reasons,
            "report": report,
        }

    def _write_privacy_report(
        self, gate: _Gate, records: list[dict[str, Any]], rejected: list[dict[str, Any]]
    ) -> str:
        from medsynth.privacy.report import write_report

        entries = [(r["case_id"], r["privacy"]) for r in records] + [
            (f"{r['case_id']}#attempt{r['attempt']}", r["privacy"]) for r in rejected
        ]
        _, html = write_report(
            self.out,
            index=gate.index,
            synthetic_ids=[e[0] for e in entries],
            verdicts=[e[1] for e in entries],
            settings=self.p.privacy.model_dump(),
            synthetic_maps=self._flagged_maps(gate, len(records), rejected),
        )
        return Path(html).name

    def _flagged_maps(self, gate: _Gate, n_written: int, rejected: list[dict[str, Any]]) -> Any:
        """Feature maps for the report's side-by-side thumbnails of the flagged attempts.

        Flagged samples are never written, so they are drawn again from their recorded seeds
        (one at a time: equal to the flagged sample up to float rounding). Written cases need
        no thumbnail and get zeros.
        """
        if not rejected:
            return None
        import numpy as np

        from medsynth.privacy.features import scan_features

        cases = {c.case_id: c for c in self.plan.cases}
        scans = []
        for r in rejected:
            c = cases[r["case_id"]]
            scans += self._sample(self._synthesizer(), self.quotas[c.quota], [c], [int(r["seed"])])
        maps = scan_features(scans, gate.index.feature_config).maps
        out = np.zeros((n_written + len(maps), *maps.shape[1:]), maps.dtype)
        out[n_written:] = maps
        return out

    def _write_datalist(self, records: list[dict[str, Any]]) -> None:
        """``dataset.json``: a MONAI datalist (``monai.data.load_decathlon_datalist`` reads it)."""
        training = []
        for r in records:
            fmt = next(f for f in DATALIST_FORMATS if f in r["files"])
            training.append(
                {"image": r["files"][fmt], "pathology": r["pathology"], "modality": r["modality"], "case_id": r["case_id"]}
            )
        mf.write_json(self.out / mf.DATASET, {"name": self.p.name, "training": training})


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The summary as a few human-readable lines (what ``medsynth generate`` prints)."""
    out = Path(summary["output_dir"])
    lines = [f"wrote {summary['written']} of {summary['requested']} requested cases to {out}"]
    for q in summary["quotas"]:
        extra = "".join(
            f", {q[k]} {k.replace('_', ' ')}" for k in ("dropped", "out_of_attempts") if q.get(k)
        )
        lines.append(f"  {q['class']:<28} {q['written']:>6} / {q['requested']}{extra}")
    pv = summary["privacy"]
    if not pv.get("gate"):
        lines.append("privacy gate: OFF (cases were not checked for memorization)")
    else:
        verdict = "FAILED" if pv["failed"] else "passed"
        lines.append(
            f"privacy gate {verdict}: {pv['flagged']} of {pv['checked']} samples flagged "
            f"({pv['flagged_rate']:.1%}, expected {pv['expected_rate']:.1%}, binomial p={pv['pvalue']:.3g})"
        )
        if pv.get("report"):
            lines.append(f"privacy report: {out / pv['report']}")
    lines.append(f"manifest: {out / summary['files']['manifest']}")
    if summary["files"].get("datalist"):
        lines.append(f"MONAI datalist: {out / summary['files']['datalist']}")
    return lines


def generate(
    protocol: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Generate the cases a protocol asks for, gated, into its output folder (resuming if cut short).

    Args:
        protocol: the protocol YAML file.
        out: output folder overriding the protocol's ``output.dir``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        force: discard an existing run in the output folder (of this or another protocol) and
            start over.
        progress: where progress goes (``progress.RichProgress``, ``JsonProgress``; default none).

    Returns:
        The run's summary (rank 0; other ranks of a torchrun job get their own partial view).

    Raises:
        ProtocolError: the protocol does not validate (nothing is written).
        InputError: the output folder belongs to another run (without ``force``), or a source scan
            cannot be read.
        PrivacyError: the privacy gate failed the run (``on_flag: fail``, a flagged rate
            significantly above 1 - quantile, or a case flagged on every attempt). The outputs and
            the report are still written, except ``dataset.json``.

    Example:
        >>> result = generate("protocols/demo.yaml", out="demo-output")   # doctest: +SKIP
        >>> result.summary["written"]                                     # doctest: +SKIP
    """
    plan = validate_protocol(protocol, out=out)
    try:
        result = _execute(plan, device, force, progress or Progress())
    except OSError as exc:  # disk full, permissions, a vanished mount: the user's to fix
        where = exc.filename or plan.output_dir
        raise InputError(
            f"{where}: {exc.strerror or exc}; free space or fix permissions, then run the same command "
            "again to resume"
        ) from None
    if not result.passed:
        err = PrivacyError(
            "privacy gate failed the run: " + "; ".join(result.summary["privacy"]["reasons"])
            + f" (report: {plan.output_dir / 'privacy_report.html'}; dataset.json was not written)"
        )
        err.result = result  # type: ignore[attr-defined]
        raise err
    return result


def _execute(plan: RunPlan, device: str, force: bool, progress: Progress) -> RunResult:
    """Run ``plan`` in this process (one rank of a torchrun job, or everything)."""
    from medsynth.models.artifact import model_sha256

    with _Dist.from_env() as dist:
        run = _Run(plan, dist, resolve_device(device, dist.local_rank), force, progress)
        run.model_sha = model_sha256(plan.model.path)
        if dist.rank == 0:
            run.prepare_output()
        dist.barrier()
        run.load_state()
        gate_failure = None
        try:
            run.run()
        except PrivacyError as exc:
            if dist.world > 1:
                raise  # torchrun stops the other ranks; a rerun finds the same case and fails again
            gate_failure = str(exc)
        finally:
            progress.close()
        dist.barrier()
        if dist.rank != 0:
            return RunResult(plan.output_dir, {"rank": dist.rank, "privacy": {}})
        return run.finalize(gate_failure)
