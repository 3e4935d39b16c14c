"""Start (or join) Ray and tell the user how to reach its dashboard safely.

Ray (since 2.59, the floor in pyproject.toml) turns token authentication on by default for a cluster that
`ray.init()` starts itself: it sets RAY_AUTH_MODE=token for the process, writes a token to ~/.ray/auth_token when
none exists, and the dashboard's API answers 401 without it
(ray/_private/authentication/authentication_token_setup.py, `enable_token_auth_by_default`).
We keep that default and only explain it; a user who turned it off, or who binds the dashboard beyond localhost,
gets one plain warning, because either makes the cluster reachable by anyone on the network who can run code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_PATH = Path.home() / ".ray" / "auth_token"


@dataclass
class RaySession:
    """What the launch command needs to know about the Ray it runs on."""

    address: str            # "local" for a cluster this process started
    started_here: bool      # True: ray.shutdown() at the end stops it
    dashboard_url: str | None
    cpus: float
    gpus: float


def security_warnings(dashboard_host: str, auth_mode: str | None, started_here: bool) -> list[str]:
    """Plain warnings for the two ways a user can open the cluster up. Pure, so it is tested without Ray."""
    warnings = []
    if (auth_mode or "").lower() == "disabled":
        warnings.append("warning: RAY_AUTH_MODE=disabled: Ray token authentication is OFF; anyone who can reach "
                        "the Ray ports or the dashboard can run code on this machine. Unset it to turn it back on.")
    if started_here and dashboard_host not in LOCAL_HOSTS:
        warnings.append(f"warning: the Ray dashboard listens on {dashboard_host}, not only on 127.0.0.1: other "
                        "machines can reach it. Keep token authentication on, or bind 127.0.0.1 and use an SSH "
                        "tunnel (ssh -L 8265:127.0.0.1:8265 HOST).")
    return warnings


def access_lines(url: str | None, auth_mode: str | None) -> list[str]:
    """How to get into the dashboard: the URL and, with token auth on, where the token comes from."""
    if not url:
        return ["Ray dashboard: not running (install ray[default] for it, or it was turned off)."]
    lines = [f"Ray dashboard: http://{url}" if "://" not in url else f"Ray dashboard: {url}"]
    if (auth_mode or "").lower() != "disabled":
        lines.append("  token authentication is on: print the token with `ray get-auth-token` "
                     f"(stored in {TOKEN_PATH}) and paste it when the dashboard asks.")
    return lines


def join_error(address: str, exc: BaseException, auth_mode: str | None) -> str:
    """One line for a cluster that cannot be joined. The usual cause besides a wrong address: the cluster uses
    token authentication and this process does not (Ray turns it on for a local ray.init only)."""
    # Ray's cause carries a whole traceback as text: its last line is the reason (e.g. InvalidAuthToken)
    lines = [str(exc).strip().splitlines()[:1], str(exc.__cause__ or "").strip().splitlines()[-1:]]
    detail = "; ".join(line[0].strip() for line in lines if line and line[0].strip())
    line = f"--address {address}: cannot join that Ray cluster ({detail[:300]})"
    if (auth_mode or "").lower() != "token":
        line += ("; if it uses token authentication, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
                 "~/.ray/auth_token) here too")
    return line


def start_ray(address: str | None, dashboard_host: str, dashboard: bool,
              log=print, listen_all: bool = False) -> RaySession:
    """ray.init on an existing cluster (--address / RAY_ADDRESS) or a fresh local one.

    A local start passes address="local" on purpose: with no address Ray would join whatever cluster
    /tmp/ray/ray_current_cluster names, which on a shared machine may be somebody else's.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():  # a caller (a test, a notebook) already holds a Ray session: use it, leave it running
        address, started_here = "current session", False
    elif address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=True, logging_level="ERROR")
        except ConnectionError as exc:
            raise UserError(join_error(address, exc, os.environ.get("RAY_AUTH_MODE"))) from None
        started_here = False
    else:
        from orchestrator.localray.processes import loopback
        from orchestrator.plan.resources import local_gpus

        # Ray is told the GPUs torch sees (CUDA_VISIBLE_DEVICES included), not left to find them itself: where
        # its own detection finds none (a container without the NVIDIA management library, say) while torch sees
        # one, GPU trials would wait forever for a GPU Ray does not know of.
        ray.init(address="local", num_cpus=os.cpu_count() or 1, num_gpus=local_gpus(), include_dashboard=dashboard,
                 dashboard_host=dashboard_host, log_to_driver=False, logging_level="ERROR",
                 **({} if listen_all else loopback()))  # every port on 127.0.0.1 unless --listen-all
        started_here = True
    try:  # the public address_info carries webui_url only for a cluster we started
        url = ray._private.worker.global_worker.node.webui_url if dashboard or not started_here else None
    except AttributeError:
        url = None
    resources = ray.cluster_resources()
    session = RaySession(address=address or "local", started_here=started_here, dashboard_url=url or None,
                         cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)))
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # ray.init sets "token" here when it enabled auth itself
    where = "started a local Ray" if started_here else f"connected to Ray at {address}"
    log(f"{where}: {session.cpus:g} CPU, {session.gpus:g} GPU")
    for line in access_lines(session.dashboard_url, auth_mode):
        log(line)
    for line in security_warnings(dashboard_host, auth_mode, started_here):
        log(line)
    return session


def stop_ray(session: RaySession | None) -> None:
    """Shut Ray down if this launch started or joined it (never a session a caller already held)."""
    import ray

    if session is not None and session.address != "current session" and ray.is_initialized():
        ray.shutdown()
