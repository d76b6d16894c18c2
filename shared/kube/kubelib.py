"""kubernetes-asyncio without its generated API and model classes.

Importing ``kubernetes_asyncio.client`` runs a package ``__init__`` that imports every generated
API and model class: about 40 MB resident and a third of a second in every process, for code
this operator never calls (it sends raw JSON, see kube.py). What it does use is small and
self-contained: :class:`Configuration`, the aiohttp REST client, and the kubeconfig / in-cluster
loaders of ``kubernetes_asyncio.config``. So :func:`load` registers the ``client`` package
*without* running its ``__init__``; its submodules import as usual, ``Configuration`` is the
real class, ``ApiClient`` (which the kubeconfig loader names at import time but only calls in
helpers we do not use) imports the real one on first use, and asking the package for anything
else runs the real ``__init__`` after all, so code that expects the full client still gets it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

_PACKAGE = "kubernetes_asyncio"
_CLIENT = f"{_PACKAGE}.client"


class _ApiClientOnUse:
    """Stands in for ``kubernetes_asyncio.client.ApiClient`` until someone makes one."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from kubernetes_asyncio.client.api_client import ApiClient

        return ApiClient(*args, **kwargs)


def _register_without_init(name: str, directory: str) -> types.ModuleType:
    """Put package ``name`` (its code in ``directory``) in sys.modules without running its
    ``__init__``; the first attribute it lacks runs that ``__init__`` into it after all."""
    origin = os.path.join(directory, "__init__.py")
    package = types.ModuleType(name)
    package.__path__ = [directory]
    package.__file__ = origin
    package.__package__ = name
    package.__spec__ = importlib.util.spec_from_file_location(
        name, origin, submodule_search_locations=[directory]
    )

    def complete(attribute: str) -> Any:
        # A submodule ("from kubernetes_asyncio import config" asks for it this way): import
        # just that one.
        if os.path.exists(os.path.join(directory, f"{attribute}.py")) or os.path.exists(
            os.path.join(directory, attribute, "__init__.py")
        ):
            return importlib.import_module(f"{name}.{attribute}")
        if not package.__dict__.get("_mcop_complete"):
            package.__dict__["_mcop_complete"] = True
            with open(origin, encoding="utf-8") as source:
                exec(compile(source.read(), origin, "exec"), package.__dict__)
            if attribute in package.__dict__:
                return package.__dict__[attribute]
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[name] = package
    return package


def _light_client_package() -> None:
    if _PACKAGE in sys.modules:
        return  # already imported the ordinary way: nothing to save any more
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{_PACKAGE} is not installed")
    top = _register_without_init(_PACKAGE, next(iter(spec.submodule_search_locations)))
    client = _register_without_init(_CLIENT, os.path.join(top.__path__[0], "client"))
    top.client = client  # type: ignore[attr-defined]
    configuration = importlib.import_module(f"{_CLIENT}.configuration")
    client.Configuration = configuration.Configuration  # type: ignore[attr-defined]
    client.ApiClient = _ApiClientOnUse  # type: ignore[attr-defined]


_light_client_package()

from kubernetes_asyncio import config  # noqa: E402
from kubernetes_asyncio.client.configuration import Configuration  # noqa: E402
from kubernetes_asyncio.client.rest import RESTClientObject  # noqa: E402

__all__ = ["Configuration", "RESTClientObject", "config"]
