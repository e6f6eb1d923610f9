"""Options of the RunPod serverless backend (``gpuflex.use("serverless", **options)`` or
``[tool.gpuflex.backends.serverless]``)."""

from __future__ import annotations

import os

import attrs

__all__ = ["RunPodConfig"]

DEFAULT_API_URL = "https://api.runpod.io"
DEFAULT_JOB_API_URL = "https://api.runpod.ai/v2"


@attrs.frozen(kw_only=True)
class RunPodConfig:
    """
    :param api_key: RunPod API key (default: ``$RUNPOD_API_KEY``, else ``api_key`` in ``~/.runpod/config.toml``).
        Never logged, never shown in errors.
    :param api_url: the control plane (GraphQL at ``<api_url>/graphql``; default ``$RUNPOD_API_BASE_URL``, else
        RunPod's). Point it at the emulator (``http://127.0.0.1:8765``) to develop offline.
    :param job_api_url: the job API (``.../v2``; default ``$RUNPOD_ENDPOINT_BASE_URL``, else ``<api_url>/v2`` when
        ``api_url`` is changed, else ``https://api.runpod.ai/v2``).
    :param image: the worker image; ``None``: RunPod's public ``runpod/pytorch`` image for GPU endpoints and
        ``runpod/base`` for CPU ones (both carry Python 3.9 to 3.13). Any image with a Python (or uv) works: the
        start command installs what the worker needs once per worker, or once per network volume. A build of
        ``backends/runpod/Dockerfile`` has it all baked in (the faster cold start).
    :param network_volume_id: a RunPod network volume to attach (mounted at ``/runpod-volume``): the workers' Python
        environment, the runtime and the bundles are cached there, so a new worker skips the install.
    :param name_prefix: prefix of every endpoint this backend creates; a later run adopts endpoints with its names
        and ``teardown()`` removes every endpoint carrying the prefix (leftovers of killed runs included).
    :param delete_on_close: delete the endpoints this instance deployed when it closes (development); set False
        for long-lived deployments (``gpuflex deploy``).
    :param scaler_type: ``REQUEST_COUNT`` (workers = queued+running jobs / ``scaler_value``: gpuflex's queue-depth
        scaling) or ``QUEUE_DELAY`` (add a worker when a job waited ``scaler_value`` seconds).
    :param flashboot: ask RunPod for FlashBoot snapshots (faster cold starts).
    :param cpu_instance: RunPod CPU instance for endpoints with ``gpu=None`` (flavour-vCPUs-GB: the default has
        8 GB, above the 4 GB of free memory RunPod's worker loop checks for at start).
    :param default_idle_timeout: RunPod's ``idleTimeout`` for an endpoint that leaves ``idle_timeout`` at gpuflex's
        default (60 s, which cannot be told apart from an explicit 60): RunPod's own default is 5 s, and every job
        bills the tail. None sends the endpoint's 60 s.
    :param locations: RunPod data centres for every endpoint (``"EU-RO-1,US-CA-2"``; ``None``: keep the
        endpoint's own).
    :param inline_bundle_limit: largest zipped bundle sent inside each job; larger ones need ``shared_bundle_dir``.
    :param shared_bundle_dir: a directory the workers see at the same path (a network volume); bundles are copied
        there once per hash and jobs carry only the path.
    :param max_pack: the most calls one RunPod job carries while an endpoint's queue is long (``.map`` and bursts
        of ``.spawn``: RunPod's worker loop pauses about a second between jobs); 1 sends every call as a job of its
        own.
    :param poll_interval_max: the longest pause between two ``/status`` polls of one job (seconds).
    :param queue_timeout: fail a job that sat IN_QUEUE this long, with the endpoint's worker health (None: never).
    :param run_rate: most ``/run`` requests per second from this backend (RunPod allows 1000 per 10 s); 0: no
        limit.
    :param status_rate: most ``/status`` and ``/stream`` requests per second (RunPod allows 2000 per 10 s): with many
        jobs in flight each is polled less often instead of drawing 429s.
    :param cancel_rate: most ``/cancel`` requests per second (RunPod allows 100 per 10 s).
    :param http_retries: attempts for a request answered 429/5xx or not answered at all, with backoff.
    :param request_timeout: seconds per HTTP request.
    :param container_disk_gb: the template's container disk (``None``: 20 GB, or for CPU workers the most their
        instance allows, vCPUs x 10 GB, x 15 GB for cpu5 flavours, if that is less).
    :param store_bucket: the S3 bucket of the object store deployed code lives in (``None``: the network volume,
        through RunPod's S3 API). ``gpuflex deploy`` needs a store; during development it carries bundles over
        ``inline_bundle_limit``.
    :param store_endpoint_url: the store's S3 API (``None``: RunPod's, ``https://s3api-<data centre>.runpod.io``,
        for the network volume's data centre).
    :param store_region: the store's region (``None``: the network volume's data centre, as RunPod's S3 API wants).
    :param store_prefix: the folder (key prefix) gpuflex keeps its objects under.
    :param store_access_key: the S3 access key (default ``$RUNPOD_S3_ACCESS_KEY``, else ``$AWS_ACCESS_KEY_ID``;
        RunPod's S3 API keys: your user id, ``user_...``). Goes into the template's environment of endpoints
        that read the store, never into logs or errors.
    :param store_secret_key: the S3 secret (default ``$RUNPOD_S3_SECRET_KEY``, else ``$AWS_SECRET_ACCESS_KEY``).
    :param deploy_prefix: ``gpuflex deploy`` names an endpoint ``<deploy_prefix><env>-<name>``.
    :param env: call the endpoints ``gpuflex deploy --env ENV`` made instead of deploying development ones: nothing
        is created or changed, and calls (gpuflex's own, pickled) run the deployed code.
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    api_url: str = attrs.field(factory=lambda: os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_API_URL)
    job_api_url: str | None = attrs.field(factory=lambda: os.environ.get("RUNPOD_ENDPOINT_BASE_URL") or None)
    image: str | None = None
    network_volume_id: str | None = None
    name_prefix: str = "gpuflex-dev-"
    delete_on_close: bool = True
    scaler_type: str = attrs.field(default="REQUEST_COUNT",
                                   validator=attrs.validators.in_(("REQUEST_COUNT", "QUEUE_DELAY")))
    scaler_value: int = 1
    flashboot: bool = True
    cpu_instance: str = "cpu3g-2-8"
    default_idle_timeout: float | None = 5.0
    locations: str | None = None
    inline_bundle_limit: int = 4 * 1024 * 1024
    shared_bundle_dir: str | None = None
    max_pack: int = attrs.field(default=1024, validator=attrs.validators.ge(1))
    poll_interval_max: float = 0.5
    queue_timeout: float | None = 600.0
    run_rate: float = 90.0
    status_rate: float = 180.0
    cancel_rate: float = 9.0
    http_retries: int = 5
    request_timeout: float = 60.0
    container_disk_gb: int | None = None
    store_bucket: str | None = None
    store_endpoint_url: str | None = None
    store_region: str | None = None
    store_prefix: str = "gpuflex"
    store_access_key: str | None = attrs.field(default=None, repr=False)
    store_secret_key: str | None = attrs.field(default=None, repr=False)
    deploy_prefix: str = "gpuflex-"
    env: str | None = None

    @property
    def graphql_url(self) -> str:
        return f"{self.api_url.rstrip('/')}/graphql"

    @property
    def jobs_url(self) -> str:
        if self.job_api_url:
            return self.job_api_url.rstrip("/")
        if self.api_url.rstrip("/") != DEFAULT_API_URL:
            return f"{self.api_url.rstrip('/')}/v2"
        return DEFAULT_JOB_API_URL
