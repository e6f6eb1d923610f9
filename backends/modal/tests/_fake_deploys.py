"""The fake's deployments: each deployed app's version history (``AppDeploymentHistory``) and rollback
(``AppRollback``), a function's definition and autoscaler as the client reads them (``FunctionGetById``,
``FunctionGetSchedulingParams``) and overrides them (``FunctionUpdateSchedulingParams``, what
``update_autoscaler`` sends), named Dicts, and the web endpoints of deployed apps (``_fake_web``).

What Modal does, the fake does (https://modal.com/docs/guide/managing-deployments, /reference/cli/app): every
publish of a deployed app is a new version; a rollback publishes an earlier version's functions again as a new
version that names the one it restored; a redeploy resets autoscaler overrides to the deployed values; a new
version's containers replace the old ones (running inputs finish first)."""

from __future__ import annotations

import copy
import time

from grpclib import GRPCError, Status
from modal_proto import api_pb2

#: The RPCs that change something on Modal (a test counts them: a deploy with nothing to change sends none).
MUTATING = frozenset({
    "AppCreate", "AppPublish", "AppStop", "AppRollback", "AppSetTags", "FunctionCreate", "FunctionPrecreate",
    "ClassCreate", "MountGetOrCreate", "MountPutFile", "ImageGetOrCreate", "SecretGetOrCreate", "BlobCreate",
    "FunctionUpdateSchedulingParams", "DictUpdate", "DictDelete", "FunctionMap",
})
_CREATING = ("AppGetOrCreate", "DictGetOrCreate")


def is_mutation(name: str, request) -> bool:
    if name in _CREATING:
        return request.object_creation_type in (api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                                                api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS)
    return name in MUTATING


def function_data_of(function: api_pb2.Function) -> api_pb2.FunctionData:
    """The ``FunctionData`` Modal's server keeps of a function sent as one ``Function`` (the client builds the same
    for GPU fallback lists): the fields both messages have, and the function as its only rank."""
    data = api_pb2.FunctionData()
    names = function.DESCRIPTOR.fields_by_name
    for field in data.DESCRIPTOR.fields:
        if field.name not in names or field.name == "ranked_functions":
            continue
        source, target = getattr(function, field.name), getattr(data, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, value in source.items():
                if field.message_type.fields_by_name["value"].message_type is not None:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            target.extend(source)
        elif field.message_type is not None:
            if function.HasField(field.name):
                target.CopyFrom(source)
        else:
            setattr(data, field.name, source)
    data.ranked_functions.append(api_pb2.FunctionData.RankedFunction(rank=0, function=function))
    return data


class DeployRPCs:
    """Mixed into ``FakeModal`` (whose ``apps``, ``functions``, ``function_data``, ``deployments``, ``workers``,
    ``web`` and ``_recv``/``_reply`` they use)."""

    def __init__(self) -> None:
        self.dicts: dict[str, dict] = {}  # dict id -> {"name", "env", "items": {key bytes: value bytes}}
        self.proxy_tokens: set[tuple[str, str]] = set()  # Modal-Key / Modal-Secret pairs web calls may send

    # -- history and rollback --------------------------------------------------------------------------------

    def record_version(self, app_id: str, request: api_pb2.AppPublishRequest | None, rollback_version: int = 0):
        """A new version of a deployed app: a snapshot of its functions as published now."""
        app = self.apps[app_id]
        history = app.setdefault("history", [])
        version = len(history) + 1
        functions = {fid: (copy.deepcopy(self.functions[fid]), copy.deepcopy(self.function_data[fid]))
                     for fid in app["layout"].function_ids.values()}
        commit = request.commit_info if request is not None else api_pb2.CommitInfo()
        history.append({"version": version, "deployed_at": time.time(), "layout": copy.deepcopy(app["layout"]),
                        "functions": functions, "commit_info": commit, "rollback_version": rollback_version,
                        "tag": request.deployment_tag if request is not None else ""})
        return version

    def version(self, app_id: str) -> int:
        return len(self.apps[app_id].get("history", []))

    async def replace_containers(self, app_id: str) -> None:
        """A new version is live: the old version's containers take no new input (running ones finish)."""
        for function_id in list(self.apps[app_id]["layout"].function_ids.values()):
            for container in self.workers.live(function_id):
                container.stopping = True
                if not container.running:
                    await self.workers.kill(container)
            self.workers.pool(function_id).wake.fire()

    async def AppDeploymentHistory(self, stream):
        request = await self._recv(stream)
        app = self.apps.get(request.app_id)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, "App not found")
        items = [api_pb2.AppDeploymentHistory(
            app_id=request.app_id, version=h["version"], deployed_at=h["deployed_at"], client_version="1.6.4",
            deployed_by="fake", tag=h["tag"], rollback_version=h["rollback_version"], rollback_allowed=True,
            commit_info=h["commit_info"]) for h in reversed(app.get("history", []))]
        await self._reply(stream, api_pb2.AppDeploymentHistoryResponse(
            app_deployment_histories=items, production_app_version=self.version(request.app_id)))

    async def AppRollback(self, stream):
        request = await self._recv(stream)
        app = self.apps.get(request.app_id)
        if app is None or app["state"] != api_pb2.APP_STATE_DEPLOYED:
            raise GRPCError(Status.FAILED_PRECONDITION, "App is not deployed")
        history = app.get("history", [])
        target = request.version if request.version > 0 else len(history) - 1
        if not 1 <= target <= len(history):
            raise GRPCError(Status.NOT_FOUND, f"App has no version {request.version}")
        await self.replace_containers(request.app_id)
        snapshot = history[target - 1]
        for function_id, (function, data) in snapshot["functions"].items():
            self.functions[function_id] = copy.deepcopy(function)
            self.function_data[function_id] = copy.deepcopy(data)
            self.function_apps[function_id] = request.app_id
        app["layout"] = copy.deepcopy(snapshot["layout"])
        self.record_version(request.app_id, None, rollback_version=target)
        for function_id in app["layout"].function_ids.values():
            await self.workers._scale(function_id)
        await self._reply(stream, api_pb2.AppRollbackResponse(url="https://modal.example/fake",
                                                              deployed_at=time.time()))

    # -- functions as the client reads them --------------------------------------------------------------------

    def _function(self, function_id: str) -> api_pb2.Function:
        if function_id not in self.functions:
            raise GRPCError(Status.NOT_FOUND, f"Function {function_id} not found")
        return self.functions[function_id]

    async def FunctionGetById(self, stream):
        request = await self._recv(stream)
        function = self._function(request.function_id)
        data = copy.deepcopy(self.function_data[request.function_id])
        data.autoscaler_settings.CopyFrom(function.autoscaler_settings)
        await self._reply(stream, api_pb2.FunctionGetByIdResponse(function=data,
                                                                  handle_metadata=self._handle(function)))

    async def FunctionGetSchedulingParams(self, stream):
        request = await self._recv(stream)
        settings = self._function(request.function_id).autoscaler_settings
        await self._reply(stream, api_pb2.FunctionGetSchedulingParamsResponse(
            autoscaler_configuration=api_pb2.AutoscalerConfiguration(settings=settings)))

    async def FunctionUpdateSchedulingParams(self, stream):
        """``update_autoscaler``: the fields sent override the deployed ones until the next deploy."""
        request = await self._recv(stream)
        function = self._function(request.function_id)
        for field in ("min_containers", "max_containers", "buffer_containers", "scaledown_window"):
            if request.settings.HasField(field):
                setattr(function.autoscaler_settings, field, getattr(request.settings, field))
        await self.workers._scale(request.function_id)
        await self._reply(stream, api_pb2.FunctionUpdateSchedulingParamsResponse(
            current_settings=function.autoscaler_settings))

    # -- named Dicts ----------------------------------------------------------------------------------------

    def live_dicts(self) -> list[str]:
        return sorted(d["name"] for d in self.dicts.values())

    async def DictGetOrCreate(self, stream):
        request = await self._recv(stream)
        env = request.environment_name or "main"
        found = next((i for i, d in self.dicts.items() if (d["env"], d["name"]) == (env, request.deployment_name)),
                     None)
        if found is None:
            if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"Dict '{request.deployment_name}' not found")
            found = self.new_id("di")
            self.dicts[found] = {"name": request.deployment_name, "env": env, "items": {}}
        await self._reply(stream, api_pb2.DictGetOrCreateResponse(dict_id=found))

    def _dict(self, dict_id: str) -> dict:
        if dict_id not in self.dicts:
            raise GRPCError(Status.NOT_FOUND, "Dict not found")
        return self.dicts[dict_id]["items"]

    async def DictUpdate(self, stream):
        request = await self._recv(stream)
        items = self._dict(request.dict_id)
        for entry in request.updates:  # keys and values stay the client's bytes: never unpickled here
            if not (request.if_not_exists and entry.key in items):
                items[entry.key] = entry.value
        await self._reply(stream, api_pb2.DictUpdateResponse(created=True))

    async def DictGet(self, stream):
        request = await self._recv(stream)
        items = self._dict(request.dict_id)
        value = items.get(request.key)
        await self._reply(stream, api_pb2.DictGetResponse(found=value is not None, value=value or b""))

    async def DictDelete(self, stream):
        request = await self._recv(stream)
        self._dict(request.dict_id)
        del self.dicts[request.dict_id]
        await self._reply(stream)
