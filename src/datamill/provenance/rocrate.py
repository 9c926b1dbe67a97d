"""A Provenance Run Crate (https://w3id.org/ro/wfrun/provenance/0.5) of one run, with its files.

:func:`to_ro_crate` writes one run; :func:`lineage_crate` the run that generated an item version.
The crate's entities follow the Workflow Run RO-Crate profiles: the pipeline is the main entity
(a ``ComputationalWorkflow``), each step a ``HowToStep`` carried out by a tool, each task a
``CreateAction`` orchestrated by a ``ControlAction``, and the run a ``CreateAction`` of the
pipeline organised by datamill. Items in folders the actor may not read are described without
name or bytes, as in every lineage format.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from datamill._version import __version__
from datamill.engine.containers import ImageUsed, step_images
from datamill.errors import BlobNotFound, InvalidInput
from datamill.home import Home
from datamill.provenance.graph import DELETED, HIDDEN, iso_time, local_name
from datamill.provenance.records import Output, RunRecords, read_run
from datamill.store.access import Actor
from datamill.store.visibility import mask_ref

#: Profiles the root of a crate made here conforms to (Workflow Run RO-Crate 0.5, on RO-Crate 1.1).
CRATE_PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
}
#: What the metadata file conforms to: RO-Crate 1.1 and Workflow RO-Crate 1.0, as the profiles above ask.
CRATE_SPECS = ["https://w3id.org/ro/crate/1.1", "https://w3id.org/workflowhub/workflow-ro-crate/1.0"]
_STATUS = {
    "succeeded": "http://schema.org/CompletedActionStatus",
    "cached": "http://schema.org/CompletedActionStatus",
    "failed": "http://schema.org/FailedActionStatus",
    "cancelled": "http://schema.org/FailedActionStatus",
    "running": "http://schema.org/ActiveActionStatus",
    "queued": "http://schema.org/PotentialActionStatus",
}


def _safe_rel(*parts: str) -> str:
    """A relative POSIX path from names that may hold slashes, never leaving the crate."""
    clean = [p for part in parts for p in PurePosixPath(part).parts if p not in {"", ".", "..", "/"}]
    return "/".join(clean)


def _pipeline_file(ref: str) -> Path | None:
    """The local file a pipeline reference names, if it names one that exists."""
    head, sep, tail = ref.rpartition(":")
    target = head if sep and head and not (len(head) == 1 and tail.startswith(("\\", "/"))) else ref
    path = Path(target)
    try:
        return path if path.suffix in {".py", ".yaml", ".yml"} and path.is_file() else None
    except OSError:
        return None


class _CrateBuilder:
    """Collects one run's records and files into a Provenance Run Crate in a directory.

    :meth:`build` reads the records, then adds the crate's entities step by step in a fixed order
    (so a crate's ``@graph`` lists them the same way every time).
    """

    def __init__(self, home: Home, actor: Actor, run_id: int, root: Path) -> None:
        self.home = home
        self.actor = actor
        self.run_id = run_id
        self.root = root
        self.files: dict[str, Any] = {}  # entity key -> crate entity
        self.used_paths: set[str] = set()
        # Set by build(); the rocrate library is untyped, so its entities are Any.
        self.rec: RunRecords
        self.crate: Any = None
        self.person: Any = None
        self.workflow: Any = None
        self.in_param: Any = None
        self.steps: dict[str, Any] = {}
        self.tools: dict[str, Any] = {}
        self.out_params: dict[tuple[str, str], Any] = {}

    def build(self) -> Path:
        """Write the crate; returns its directory."""
        from rocrate.rocrate import ROCrate

        self.rec = read_run(self.home.db, self.actor, self.run_id)
        self.crate = ROCrate(version="1.1")
        self.crate.metadata["conformsTo"] = [{"@id": uri} for uri in CRATE_SPECS]
        self._describe_crate()
        engine = self._add_engine()
        self.person = self._add_person()
        self.workflow = self._add_workflow()
        self._add_steps()
        run_inputs = [
            self._version_entity(int(d["version_id"]), "inputs", self.in_param)
            for d in self.rec.run.inputs or []
            if d.get("version_id") is not None
        ]
        controls, published = self._add_task_actions()
        self.workflow["output"] = self._published_params()
        run_action = self._add_run_action(run_inputs, published)
        self._add_organize(engine, controls, run_action)
        self.crate.root_dataset["mentions"] = [run_action]
        self.crate.write(self.root)
        return self.root

    # ------------------------------------------------------------------ helpers

    def _add(self, ident: str, props: dict[str, Any]) -> Any:
        """Add a context entity ``ident`` with ``props``; returns it."""
        from rocrate.model.contextentity import ContextEntity

        return self.crate.add(ContextEntity(self.crate, ident, properties=props))

    def _place(self, rel: str, digest: str, inline: bytes | None) -> str | None:
        """Copy the bytes into the crate at ``rel`` (made unique); the path, or None if the blob is gone."""
        base, n = rel, 1
        while rel in self.used_paths:
            n += 1
            stem = PurePosixPath(base)
            rel = str(stem.with_name(f"{stem.stem}.{n}{stem.suffix}"))
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if inline is not None:
                target.write_bytes(inline)
            else:
                with self.home.blobs.open(digest) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (BlobNotFound, FileNotFoundError):
            target.unlink(missing_ok=True)
            return None
        self.used_paths.add(rel)
        return rel

    def _add_file(self, rel: str | None, fallback_id: str, props: dict[str, Any]) -> Any:
        """A file entity for the bytes at ``rel``, or a ``CreativeWork`` without bytes when they are gone."""
        if rel is None:
            return self._add(fallback_id, {"@type": "CreativeWork", **props})
        return self.crate.add_file(self.root / rel, rel, properties=props)

    # ------------------------------------------------------------------ the crate, its software and people

    def _describe_crate(self) -> None:
        """The profiles the crate conforms to, its name, description and date."""
        run, df_name = self.rec.run, self.rec.dataflow
        profiles = [
            self._add(uri, {"@type": "CreativeWork", "name": name, "version": uri.rsplit("/", 1)[1]})
            for uri, name in CRATE_PROFILES.items()
        ]
        self.crate.root_dataset["conformsTo"] = profiles
        self.crate.name = f"datamill run {run.id}: {run.pipeline_name}"
        self.crate.description = (
            f"Run {run.id} of pipeline {run.pipeline_name!r} ({self._shown_ref()}), {run.status}"
            + (f", for dataflow {df_name!r}" if df_name else "")
            + (f"; reason: {run.reason}" if run.reason else "")
            + ". Exported by datamill with its inputs, outputs and per-task provenance."
        )
        self.crate.datePublished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def _shown_ref(self) -> str | None:
        """The run's pipeline reference, without a server path unless the actor is a site admin."""
        ref = self.rec.run.pipeline_ref
        return ref if self.actor.is_admin else mask_ref(ref)

    def _add_engine(self) -> Any:
        """datamill itself, the software that orchestrated the run."""
        return self._add(
            "#datamill",
            {
                "@type": "SoftwareApplication",
                "name": "datamill",
                "version": __version__,
                "softwareVersion": __version__,
            },
        )

    def _add_person(self) -> Any:
        """The user who requested the run, or None."""
        requester = self.rec.requester
        if requester is None:
            return None
        return self._add(f"#user-{local_name(requester)}", {"@type": "Person", "name": requester})

    # ------------------------------------------------------------------ the pipeline, its steps and tools

    def _add_workflow(self) -> Any:
        """The pipeline (the crate's main entity): its source file when it is a local one."""
        run = self.rec.run
        source = _pipeline_file(run.pipeline_ref)
        is_yaml = source is not None and source.suffix in {".yaml", ".yml"}
        lang = self._add(
            "#yaml" if is_yaml else "#python",
            {"@type": "ComputerLanguage", "name": "YAML (datamill pipeline)", "url": "https://yaml.org/"}
            if is_yaml
            else {"@type": "ComputerLanguage", "name": "Python", "url": "https://www.python.org/"},
        )
        wf_props: dict[str, Any] = {
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
            "name": run.pipeline_name,
            "identifier": self._shown_ref(),
            "programmingLanguage": lang,
            "description": "The pipeline as it is at export time; the code version each step ran with is its "
            "tool's softwareVersion (a hash of the step's code).",
        }
        if source is not None:
            rel = _safe_rel("pipeline", source.name)
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.root / rel)
            self.used_paths.add(rel)
            workflow = self.crate.add_file(self.root / rel, rel, properties=wf_props)
        else:
            wf_props["@type"] = ["SoftwareSourceCode", "ComputationalWorkflow", "HowTo"]
            workflow = self._add("#pipeline", wf_props)
        self.crate.mainEntity = workflow
        return workflow

    def _add_steps(self) -> None:
        """The workflow's input parameter, and one step and tool per step of the pipeline that ran."""
        self.in_param = self._add(
            "#param-items",
            {
                "@type": "FormalParameter",
                "name": "items",
                "additionalType": "File",
                "description": "the input item versions of the run",
                "multipleValues": True,
            },
        )
        self.workflow["input"] = [self.in_param]
        images = step_images(self.rec.run.params_meta)
        for t in self.rec.tasks:
            if t.step in self.steps:
                continue
            tool = self._add(
                f"#tool-{local_name(t.step)}",
                {
                    "@type": "SoftwareApplication",
                    "name": t.step,
                    "softwareVersion": t.step_code,
                    "version": t.step_code,
                },
            )
            used = images.get(t.step)
            if used is not None:
                tool["containerImage"] = self._add_image(used)
            self.tools[t.step] = tool
            self.steps[t.step] = self._add(
                f"#step-{local_name(t.step)}",
                {"@type": "HowToStep", "name": t.step, "position": len(self.steps), "workExample": tool},
            )
        self.workflow["step"] = list(self.steps.values())
        self.workflow["hasPart"] = list(self.tools.values())

    def _add_image(self, used: ImageUsed) -> Any:
        """A container step's image, as Workflow Run Crate's ``ContainerImage``: name, tag and sha256."""
        name, tag = used.image, None
        last = used.image.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = used.image.rsplit(":", 1)
        props = {
            "@type": "ContainerImage",
            "additionalType": {"@id": "https://w3id.org/ro/terms/workflow-run#DockerImage"},
            "name": name,
            "tag": tag,
            "sha256": used.digest.removeprefix("sha256:") if used.digest else None,
        }
        return self._add(f"#image-{local_name(used.image)}", {k: v for k, v in props.items() if v is not None})

    def _out_param(self, step: str, name: str) -> Any:
        """The formal parameter of output ``name`` of ``step`` (added to its tool the first time)."""
        key = (step, name)
        if key not in self.out_params:
            self.out_params[key] = self._add(
                f"#param-{local_name(step)}-{local_name(name)}",
                {"@type": "FormalParameter", "name": f"{step}/{name}", "additionalType": "File"},
            )
            self.tools[step].append_to("output", self.out_params[key])
        return self.out_params[key]

    def _published_params(self) -> list[Any]:
        """The output parameters of the workflow: those some task published as an item version."""
        published = {
            (t.step, o.name) for t in self.rec.tasks for o in self.rec.outputs[t.id] if self.rec.published(t, o)
        }
        return [p for key, p in self.out_params.items() if key in published]

    # ------------------------------------------------------------------ files

    def _version_entity(self, vid: int, prefix: str, param: Any = None) -> Any:
        """The entity of an item version (its bytes under ``prefix/FOLDER/NAME``), once per version."""
        key = f"v{vid}"
        if key in self.files:
            return self.files[key]
        row, readable = self.rec.versions.get(vid, (None, False))
        if row is None or not readable:
            entity = self._add(
                f"#version-{vid}", {"@type": "CreativeWork", "name": HIDDEN if row is not None else DELETED}
            )
        else:
            props = {
                "name": row.item_name,
                "alternateName": f"{row.folder}/{row.item_name}",
                "version": str(row.number),
                "identifier": row.digest,
                "contentSize": str(row.size),
                "encodingFormat": row.content_type,
                "dateCreated": iso_time(row.created_at),
                "description": f"{row.folder}/{row.item_name} version {row.number}, digest {row.digest}",
            }
            if param is not None:
                props["exampleOfWork"] = param
            rel = self._place(_safe_rel(prefix, row.folder, row.item_name), row.digest, None)
            entity = self._add_file(rel, f"#version-{vid}", props)
        self.files[key] = entity
        return entity

    def _output_entity(self, t: Any, o: Output) -> Any:
        """The entity of an output of task ``t``: its item version, or the output's own bytes."""
        if self.rec.published(t, o):
            assert o.version_id is not None
            return self._version_entity(o.version_id, "outputs", self._out_param(t.step, o.name))
        key = f"o{t.id}/{o.name}"
        if key in self.files:
            return self.files[key]
        props = {
            "name": o.name,
            "identifier": o.digest,
            "contentSize": str(o.size),
            "encodingFormat": o.content_type,
            "description": f"output {o.name!r} of task {t.id} ({t.step}), {self._output_about(o)}; digest {o.digest}",
            "exampleOfWork": self._out_param(t.step, o.name),
        }
        rel = self._place(_safe_rel("tasks", str(t.id), o.name), o.digest, o.inline)
        entity = self._add_file(rel, f"#output-{t.id}-{local_name(o.name)}", props)
        self.files[key] = entity
        return entity

    def _output_about(self, o: Output) -> str:
        """How an output that is not its own item version relates to the versions (for its description)."""
        if o.version_id is None:
            return "not published"
        row, readable = self.rec.versions.get(o.version_id, (None, False))
        if row is not None and readable:
            return f"the same bytes as {row.folder}/{row.item_name} version {row.number}, which another task made"
        return "the same bytes as an existing version, which another task made"

    # ------------------------------------------------------------------ what ran

    def _add_task_actions(self) -> tuple[list[Any], list[Any]]:
        """Per task, a CreateAction (what ran) and a ControlAction (which step it carried out).

        Returns the control actions and the entities the tasks published as item versions.
        """
        controls: list[Any] = []
        published: list[Any] = []
        for t in self.rec.tasks:
            control, made = self._add_task_action(t)
            controls.append(control)
            published += made
        return controls, published

    def _task_objects(self, t: Any) -> list[Any]:
        """What task ``t`` used: input versions, upstream tasks' outputs, and its parameters."""
        by_task = self.rec.by_id
        objects = []
        for inp in self.rec.inputs[t.id]:
            if inp.version_id is not None and (inp.upstream_task_id is None or inp.upstream_task_id not in by_task):
                objects.append(self._version_entity(inp.version_id, "inputs", self.in_param))
            elif inp.upstream_task_id in by_task:
                up = by_task[inp.upstream_task_id]
                match = [o for o in self.rec.outputs[up.id] if o.name == inp.output_name]
                if match:
                    objects.append(self._output_entity(up, match[0]))
        for k, v in sorted(self.rec.params_of(t).items()):
            objects.append(
                self._add(
                    f"#task-{t.id}-param-{local_name(k)}",
                    {"@type": "PropertyValue", "name": k, "value": v if isinstance(v, str) else json.dumps(v)},
                )
            )
        return objects

    def _add_task_action(self, t: Any) -> tuple[Any, list[Any]]:
        """The CreateAction and ControlAction of task ``t``; returns the control and what it published."""
        objects = self._task_objects(t)
        outputs = self.rec.outputs[t.id]
        results = [self._output_entity(t, o) for o in outputs]
        published = [r for o, r in zip(outputs, results, strict=True) if self.rec.published(t, o)]
        item = self.rec.item_names[t.id]
        props: dict[str, Any] = {
            "@type": "CreateAction",
            "name": f"{t.step}" + (f" on {item}" if item else "") + f" (task {t.id})",
            "actionStatus": _STATUS.get(t.status, "http://schema.org/PotentialActionStatus"),
            "identifier": t.key,
            "startTime": iso_time(t.started_at),
            "endTime": iso_time(t.finished_at),
        }
        if t.cached_from:
            props["description"] = f"cached: the outputs of task {t.cached_from} (same key) were reused"
        if t.error:
            props["error"] = t.error
        action = self.crate.add_action(
            self.tools[t.step], identifier=f"#task-{t.id}", object=objects, result=results, properties=_clean_ld(props)
        )
        if self.person is not None:
            action["agent"] = self.person
        control = self._add(
            f"#control-{t.id}",
            {
                "@type": "ControlAction",
                "name": f"orchestrate {t.step} (task {t.id})",
                "instrument": self.steps[t.step],
                "object": action,
            },
        )
        return control, published

    def _add_run_action(self, run_inputs: list[Any], published: list[Any]) -> Any:
        """The run itself: a CreateAction of the workflow, part of its dataflow if it had one."""
        run = self.rec.run
        unique_published = list({p.id: p for p in published}.values())
        run_props = _clean_ld(
            {
                "@type": "CreateAction",
                "name": f"Run {run.id} of {run.pipeline_name}",
                "description": run.reason or None,
                "actionStatus": _STATUS.get(run.status, "http://schema.org/PotentialActionStatus"),
                "startTime": iso_time(run.started_at or run.requested_at),
                "endTime": iso_time(run.finished_at),
                "identifier": f"datamill run {run.id}",
            }
        )
        run_action = self.crate.add_action(
            self.workflow, identifier=f"#run-{run.id}", object=run_inputs, result=unique_published, properties=run_props
        )
        if self.person is not None:
            run_action["agent"] = self.person
        df_name = self.rec.dataflow
        if df_name is not None:
            run_action["isPartOf"] = self._add(
                f"#dataflow-{local_name(df_name)}",
                {"@type": "CreativeWork", "name": f"dataflow {df_name}", "version": str(run.dataflow_version or "")},
            )
        return run_action

    def _add_organize(self, engine: Any, controls: list[Any], run_action: Any) -> None:
        """The engine's orchestration of the run: an OrganizeAction over the tasks' control actions."""
        run = self.rec.run
        organize = _clean_ld(
            {
                "@type": "OrganizeAction",
                "name": f"datamill scheduling of run {run.id}",
                "startTime": iso_time(run.started_at or run.requested_at),
                "endTime": iso_time(run.finished_at),
            }
        )
        org = self._add(f"#organize-{run.id}", organize)
        org["instrument"] = engine
        org["object"] = controls
        org["result"] = run_action
        if self.person is not None:
            org["agent"] = self.person


def _clean_ld(props: dict[str, Any]) -> dict[str, Any]:
    """JSON-LD properties without empty values."""
    return {k: v for k, v in props.items() if v is not None and v != ""}


def _zip_dir(directory: Path, target: Path) -> None:
    """Zip the contents of ``directory`` (paths relative to it) into ``target``."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(directory).as_posix())


def to_ro_crate(home: Home, actor: Actor, run_id: int, dest_dir: str | Path) -> Path:
    """Write a Provenance Run Crate of run ``run_id`` at ``dest_dir``; returns it.

    A ``dest_dir`` ending in ``.zip`` gets a zip file, anything else a directory (which must not
    exist yet or be empty). The crate holds ``ro-crate-metadata.json`` and the files: the inputs
    (``inputs/FOLDER/NAME``), the published outputs (``outputs/FOLDER/NAME``), outputs that were not
    published (``tasks/TASK/NAME``) and the pipeline source when it is a local file. Items in
    folders the actor may not read are described without name or bytes.
    """
    dest = Path(dest_dir)
    if dest.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="datamill-crate-") as tmp:
            _CrateBuilder(home, actor, run_id, Path(tmp)).build()
            dest.parent.mkdir(parents=True, exist_ok=True)
            _zip_dir(Path(tmp), dest)
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists and is not an empty directory; choose another path", path=str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _CrateBuilder(home, actor, run_id, dest).build()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def generating_run(home: Home, actor: Actor, path: str, version: int | None = None) -> int:
    """The run that generated ``path`` (its current version, or ``version``)."""
    info = home.store.get_version(actor, path, version)
    # The run recorded on the version: the one whose task generated it, as in every other format.
    rid = info.run_id
    if rid is None:
        raise InvalidInput(
            f"{info.path} version {info.version} was not made by a run (created via {info.created_via!r}); "
            "there is no run to describe (try `datamill lineage --down`)",
            path=info.path,
        )
    return int(rid)


def lineage_crate(home: Home, actor: Actor, path: str, dest_dir: str | Path, version: int | None = None) -> Path:
    """Write the RO-Crate of the run that generated ``path`` (see :func:`to_ro_crate`); returns it."""
    return to_ro_crate(home, actor, generating_run(home, actor, path, version), dest_dir)
