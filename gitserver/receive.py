"""git-receive-pack with the deploy hook between "pack received" and "refs updated".

dulwich's ``ReceivePackHandler`` speaks the protocol; this subclass replaces
how a push is applied: the pack streams into a quarantine directory through
git's index-pack (``gitserver.packs``: bounded memory, a size limit, the
connectivity check before any hook runs), the deploy branch's new commit is
handed to the deploy hook while its output streams to the pusher over
side-band, and only when the hook returns do the pack files move in and the
ref move (compare-and-swap). Anything else leaves the repo as
it was. Called by the SSH session for ``git-receive-pack``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Protocol as TypingProtocol

from dulwich.protocol import CAPABILITY_SIDE_BAND_64K, SIDE_BAND_CHANNEL_PROGRESS
from dulwich.repo import Repo
from dulwich.server import DictBackend, ReceivePackHandler

from bae.console import ERROR, STEP
from bae.errors import BaeError
from bae.model import Source, User, slug
from gitserver.packs import PackRefused, check_connected, index_pack
from gitserver.repos import DEPLOY_BRANCHES, ZERO, CommitSource, Repositories, migrate, quarantine, quarantine_store

__all__ = ["PushTarget", "DeployHook", "Progress", "receive_pack"]

log = logging.getLogger("bae.gitserver")

DEFAULT_MAX_PUSH_SIZE = 1024**3


@dataclass(frozen=True)
class PushTarget:
    app: str
    deployment: str
    user: User

    @property
    def slug(self) -> str:
        return slug(self.app, self.deployment)


class Progress:
    """Lines for the pusher's terminal (``remote: …``), written as they happen.

    Callers (the build, the scheduler's thread) only queue a line; a writer thread
    of this push sends it, so a pusher that stops reading slows down nobody but
    itself. Past ``limit`` queued lines, output is dropped (and said so). After the
    client went away ``cancelled`` turns true, so long work can stop early.
    """

    def __init__(self, write: Callable[[bytes], None] | None, alive: Callable[[], bool], limit: int = 5000) -> None:
        self._write = write
        self._alive = alive
        self._gone = False
        self._queue: queue.Queue = queue.Queue(limit)
        self._dropped = 0
        self._writer = threading.Thread(target=self._drain, daemon=True) if write else None
        if self._writer:
            self._writer.start()

    def __call__(self, text: str) -> None:
        self.write(text if text.endswith("\n") else text + "\n")

    def write(self, text: str) -> None:
        if self._write is None or self._gone:
            return
        try:
            self._queue.put_nowait(text.encode("utf-8", "replace"))
        except queue.Full:
            self._dropped += 1

    def _drain(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._gone:
                continue
            try:
                if self._dropped:
                    self._write(f"{ERROR}({self._dropped} lines of output were dropped: the terminal did not keep up)\n".encode())
                    self._dropped = 0
                self._write(data)
            except Exception:  # the client hung up; the push will be refused
                self._gone = True

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (for up to ``timeout`` seconds) and stop the writer."""
        if self._writer:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                self._gone = True
                return
            self._writer.join(timeout)

    @property
    def cancelled(self) -> bool:
        return self._gone or not self._alive()


class DeployHook(TypingProtocol):
    """What a push to a deploy branch runs before its ref moves (the platform's pipeline)."""

    def lock(self, app: str, deployment: str, waiting: Callable[[], None]) -> AbstractContextManager[None]:
        """The deployment's deploy lock: held from the ref check to the ref update."""

    def __call__(self, target: PushTarget, old: str, new: str, source: Source, progress: Progress) -> None:
        """Build and deploy ``new``; raise BaeError to refuse the push."""


def _branch(ref: bytes) -> str:
    return ref.decode("utf-8", "replace").removeprefix("refs/heads/")


class _Handler(ReceivePackHandler):
    def __init__(self, repo: Repo, proto, target: PushTarget, hook: DeployHook, alive: Callable[[], bool],
                 max_push_size: int) -> None:
        super().__init__(DictBackend({"/": repo}), ["/"], proto)
        self.max_push_size = max_push_size
        self.target = target
        self.hook = hook
        self.alive = alive

    def _progress(self) -> Progress:
        write = None
        if self.has_capability(CAPABILITY_SIDE_BAND_64K):
            def write(data: bytes) -> None:
                self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS, data)
        return Progress(write, self.alive)

    def _apply_pack(self, refs):
        progress = self._progress()
        try:
            yield from self._apply_with(progress, refs)
        finally:
            progress.close()  # everything said is sent before the status report

    def _apply_with(self, progress: "Progress", refs):
        with quarantine(self.repo) as qdir:
            try:
                if any(new != ZERO for _, new, _ in refs):
                    size = index_pack(self.proto.recv, self.repo.controldir(), qdir, self.max_push_size)
                    log.info("push %s by %s: received a %d-byte pack", self.target.slug, self.target.user.name, size)
            except PackRefused as exc:
                self._refused(exc, progress)
                yield (b"unpack", exc.status.encode())
                for _, _, ref in refs:
                    yield (ref, b"unpacker error")
                return
            yield (b"unpack", b"ok")
            try:  # before any hook sees the commit: a ref to an incomplete history is refused
                check_connected(self.repo.controldir(), qdir, [new for _, new, _ in refs if new != ZERO])
            except PackRefused as exc:
                self._refused(exc, progress)
                for _, _, ref in refs:
                    yield (ref, exc.status.encode())
                return
            store = quarantine_store(self.repo, qdir)
            try:
                yield from self._update_refs(refs, store, progress)
            finally:
                store.close()

    def _refused(self, exc: PackRefused, progress: "Progress") -> None:
        log.warning("push %s by %s: pack refused: %s%s", self.target.slug, self.target.user.name, exc.message,
                    f" ({exc.detail})" if exc.detail else "")
        progress(f"{ERROR}{exc.message}")
        if exc.hint:
            progress(f"{ERROR}{exc.hint}")

    def _refusal(self, new: bytes, ref: bytes, deploy_refs: list) -> str | None:
        if ref not in DEPLOY_BRANCHES:
            name = _branch(ref)
            if ref.startswith(b"refs/heads/"):
                return f"only master or main deploy; push your branch with: git push bae {name}:master"
            return f"only the master or main branch can be pushed, not {ref.decode(errors='replace')}"
        if new == ZERO:
            return "deleting the deploy branch is not allowed (use apps:destroy or deployments:destroy)"
        if len(deploy_refs) > 1:
            return "push one deploy branch (master or main) at a time"
        return None

    def _update_refs(self, refs, store, progress: Progress):
        deploy_refs = [r for r in refs if r[2] in DEPLOY_BRANCHES]
        for old, new, ref in refs:
            reason = self._refusal(new, ref, deploy_refs)
            if reason:
                progress(f"{ERROR}{_branch(ref)}: {reason}")
                yield (ref, reason.encode())
                continue
            yield (ref, self._deploy(old, new, ref, store, progress))

    def _deploy(self, old: bytes, new: bytes, ref: bytes, store, progress: Progress) -> bytes:
        target = self.target
        started = time.monotonic()
        with self.hook.lock(target.app, target.deployment,
                            waiting=lambda: progress(f"{STEP}Waiting for another push to this deployment to finish")):
            try:
                current = self.repo.refs[ref]
            except KeyError:
                current = ZERO
            if current != old:
                progress(f"{ERROR}Another push updated this deployment while yours was uploading.")
                progress(f"{ERROR}Fetch, merge or rebase, and push again.")
                return b"fetch first: the deployment moved during your push"
            try:
                source = CommitSource(store, new)
                self.hook(target, old.decode(), new.decode(), source, progress)
            except BaeError as exc:
                log.info("push %s by %s: refused: %s", target.slug, target.user.name, exc.message)
                return exc.message.splitlines()[0][:200].encode("utf-8", "replace")
            except Exception:
                log.exception("push %s by %s: deploy hook crashed", target.slug, target.user.name)
                progress(f"{ERROR}Internal error in the platform while deploying; the operator's log has the details.")
                return b"internal error while deploying (nothing was changed)"
            migrate(store, self.repo)
            if not self.repo.refs.set_if_equals(ref, None if old == ZERO else old, new):
                return b"failed to update ref"
            self.repo.refs.set_symbolic_ref(b"HEAD", ref)
        log.info("push %s by %s: %s %s..%s ok (%.1f s)", target.slug, target.user.name, _branch(ref),
                 old[:7].decode(), new[:7].decode(), time.monotonic() - started)
        return b"ok"


def receive_pack(repos: Repositories, target: PushTarget, proto, hook: DeployHook,
                 alive: Callable[[], bool], max_push_size: int = DEFAULT_MAX_PUSH_SIZE) -> None:
    """Serve one ``git-receive-pack`` conversation on ``proto`` for ``target``.

    A pack larger than ``max_push_size`` bytes (0: no limit) is refused as soon as it is exceeded.
    """
    repo = repos.open(target.app, target.deployment)
    try:
        _Handler(repo, proto, target, hook, alive, max_push_size).handle()
    finally:
        repo.close()
