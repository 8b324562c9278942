"""The ABI layer shared by the services: Solidity event declarations (:mod:`.signature`), what
decoded values look like (:mod:`.types`), log decoding (:mod:`.decode`) and the webhook's JSON
form of decoded values (:mod:`.jsonform`). The processor decodes to match conditions, the
workers decode to build payloads; neither imports the other."""

from core.abi.decode import (
    DecodeError,
    FieldReader,
    LogDecoder,
    decode_log,
    field_reader,
    log_decoder,
)
from core.abi.jsonform import to_json_args
from core.abi.signature import EventSignature, Param, arg_name, parse_event_signature
from core.abi.types import FieldType, Kind, field_type, param_type

__all__ = [
    "DecodeError", "EventSignature", "FieldReader", "FieldType", "Kind", "LogDecoder", "Param",
    "arg_name", "decode_log", "field_reader", "field_type", "log_decoder", "param_type",
    "parse_event_signature", "to_json_args",
]
