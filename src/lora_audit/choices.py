"""The enumerated choices of the command line and the Python API, each defined once.

``--device``, ``--method`` and ``--input-format`` (and the API's ``device=``, ``method=``,
``input_format=``) take one of a few names. Each is a ``Literal`` here, for the dataclasses and
function signatures, and a :class:`~enum.StrEnum` with the same values, for the command line's
choices; :func:`device_name`, :func:`method_name` and :func:`input_format_name` check a value
and return it typed, so an unknown name is refused where it enters rather than read as some
default further down. The stage that uses a choice (the engine, the format readers) calls the
same check, so the CLI and the API cannot drift.

:class:`AdapterFormat` is the other vocabulary of formats: what an adapter was read as (its
``format``, in every report), one name per reader variant; which reader gives each and which
writer writes it back is in :mod:`lora_audit.formats.registry`.

This module imports only the standard library and :mod:`lora_audit.errors` (no numpy), so the
command line's ``--help`` can build its choices from it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, TypeGuard, get_args

from lora_audit.errors import UsageError

DeviceName = Literal["auto", "cpu", "cuda"]
"""Where the spectra are computed: ``auto`` (CUDA when torch sees one), ``cpu``, ``cuda``."""

MethodName = Literal["auto", "qr", "gram"]
"""Core factorisation: ``auto`` (Gram, QR where Gram is not accurate enough), ``qr``, ``gram``."""

InputFormatName = Literal["auto", "peft", "kohya", "mlx"]
"""Reader: ``auto`` detects; ``peft``, ``kohya`` (every single-file SD format) or ``mlx``."""

ExtractFormatName = Literal["peft"]
"""``extract --to``: the adapter format written (``peft``: ``adapter_config.json`` + weights)."""

__all__ = [
    "AdapterFormat",
    "Device",
    "DeviceName",
    "ExtractFormat",
    "ExtractFormatName",
    "InputFormat",
    "InputFormatName",
    "Method",
    "MethodName",
    "device_name",
    "extract_format_name",
    "input_format_name",
    "method_name",
]


class Device(StrEnum):
    """``--device``: the values of :data:`DeviceName`."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Method(StrEnum):
    """``--method``: the values of :data:`MethodName`."""

    AUTO = "auto"
    QR = "qr"
    GRAM = "gram"


class InputFormat(StrEnum):
    """``--input-format``: the values of :data:`InputFormatName`."""

    AUTO = "auto"
    PEFT = "peft"
    KOHYA = "kohya"
    MLX = "mlx"


class AdapterFormat(StrEnum):
    """What an adapter was read as: ``Adapter.format`` and the reports' ``adapter.format``.

    A :class:`~enum.StrEnum`, so a member is its name (``AdapterFormat.PEFT == "peft"``) and
    every report writes the plain string. One row each in ``docs/formats.md``.
    """

    PEFT = "peft"
    PEFT_LOHA = "peft-loha"
    PEFT_LOKR = "peft-lokr"
    PEFT_ADALORA = "peft-adalora"
    DIFFUSERS_PIPELINE = "diffusers-pipeline"
    KOHYA = "kohya"
    LYCORIS = "lycoris"
    COMFYUI = "comfyui"
    DIFFUSERS = "diffusers"
    XLABS = "xlabs"
    MLX = "mlx"
    GGUF = "gguf"
    MERGED = "merged"
    """``merge``'s sum of its inputs, in memory only: never read from or written to a file."""


class ExtractFormat(StrEnum):
    """``extract --to``: the values of :data:`ExtractFormatName`."""

    PEFT = "peft"


def _refuse(what: str, value: object, allowed: tuple[str, ...]) -> UsageError:
    return UsageError(
        f"{what}={value!r} is not a valid choice",
        hint=f"use one of {', '.join(repr(a) for a in allowed)}",
    )


def _plain(value: object) -> object:
    """An enum member as its plain ``str`` value (reports record the name, not the member)."""
    return value.value if isinstance(value, StrEnum) else value


def _is_device(value: object) -> TypeGuard[DeviceName]:
    return isinstance(value, str) and value in get_args(DeviceName)


def _is_method(value: object) -> TypeGuard[MethodName]:
    return isinstance(value, str) and value in get_args(MethodName)


def _is_input_format(value: object) -> TypeGuard[InputFormatName]:
    return isinstance(value, str) and value in get_args(InputFormatName)


def device_name(value: object) -> DeviceName:
    """``value`` (a name or a :class:`Device`) as a :data:`DeviceName`.

    Raises
    ------
    UsageError
        When it is not one of ``auto``, ``cpu``, ``cuda``.
    """
    text = _plain(value)
    if not _is_device(text):
        raise _refuse("device", value, get_args(DeviceName))
    return text


def method_name(value: object) -> MethodName:
    """``value`` (a name or a :class:`Method`) as a :data:`MethodName`.

    Raises
    ------
    UsageError
        When it is not one of ``auto``, ``qr``, ``gram``.
    """
    text = _plain(value)
    if not _is_method(text):
        raise _refuse("method", value, get_args(MethodName))
    return text


def input_format_name(value: object) -> InputFormatName:
    """``value`` (a name or an :class:`InputFormat`) as an :data:`InputFormatName`.

    Raises
    ------
    UsageError
        When it is not one of ``auto``, ``peft``, ``kohya``, ``mlx``.
    """
    text = _plain(value)
    if not _is_input_format(text):
        raise _refuse("input_format", value, get_args(InputFormatName))
    return text


def _is_extract_format(value: object) -> TypeGuard[ExtractFormatName]:
    return isinstance(value, str) and value in get_args(ExtractFormatName)


def extract_format_name(value: object) -> ExtractFormatName:
    """``value`` (a name or an :class:`ExtractFormat`) as an :data:`ExtractFormatName`.

    Raises
    ------
    UsageError
        When it is not ``peft``.
    """
    text = _plain(value)
    if not _is_extract_format(text):
        raise _refuse("to", value, get_args(ExtractFormatName))
    return text
