from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_STORE_FULL: _ClassVar[ErrorCode]
    ERROR_CODE_OUT_OF_DISK: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_EXISTS: _ClassVar[ErrorCode]
    ERROR_CODE_LOST: _ClassVar[ErrorCode]
    ERROR_CODE_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_CODE_PROTOCOL: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]
    ERROR_CODE_FREED: _ClassVar[ErrorCode]
    ERROR_CODE_OWNER_DIED: _ClassVar[ErrorCode]
    ERROR_CODE_RECONSTRUCTION_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_FETCH_TIMED_OUT: _ClassVar[ErrorCode]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_STORE_FULL: ErrorCode
ERROR_CODE_OUT_OF_DISK: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_EXISTS: ErrorCode
ERROR_CODE_LOST: ErrorCode
ERROR_CODE_TIMEOUT: ErrorCode
ERROR_CODE_PROTOCOL: ErrorCode
ERROR_CODE_INVALID: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode
ERROR_CODE_FREED: ErrorCode
ERROR_CODE_OWNER_DIED: ErrorCode
ERROR_CODE_RECONSTRUCTION_FAILED: ErrorCode
ERROR_CODE_FETCH_TIMED_OUT: ErrorCode

class Hello(_message.Message):
    __slots__ = ("version", "segment", "pid")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    version: int
    segment: int
    pid: int
    def __init__(self, version: _Optional[int] = ..., segment: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("version", "node_id", "segment", "segment_size", "inline_max_bytes", "parallel_copy_min_bytes", "copy_threads", "error", "max_frame_bytes", "warm_bytes", "warm_now_bytes", "max_recreations")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_COPY_MIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    COPY_THREADS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    WARM_BYTES_FIELD_NUMBER: _ClassVar[int]
    WARM_NOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RECREATIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    node_id: bytes
    segment: int
    segment_size: int
    inline_max_bytes: int
    parallel_copy_min_bytes: int
    copy_threads: int
    error: Error
    max_frame_bytes: int
    warm_bytes: int
    warm_now_bytes: int
    max_recreations: int
    def __init__(self, version: _Optional[int] = ..., node_id: _Optional[bytes] = ..., segment: _Optional[int] = ..., segment_size: _Optional[int] = ..., inline_max_bytes: _Optional[int] = ..., parallel_copy_min_bytes: _Optional[int] = ..., copy_threads: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., max_frame_bytes: _Optional[int] = ..., warm_bytes: _Optional[int] = ..., warm_now_bytes: _Optional[int] = ..., max_recreations: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("object_id", "segment", "offset", "data_size", "metadata")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    segment: int
    offset: int
    data_size: int
    metadata: bytes
    def __init__(self, object_id: _Optional[bytes] = ..., segment: _Optional[int] = ..., offset: _Optional[int] = ..., data_size: _Optional[int] = ..., metadata: _Optional[bytes] = ...) -> None: ...

class PutInline(_message.Message):
    __slots__ = ("object_id", "data", "metadata", "name", "contained_ids", "call_site", "recreatable", "recreated")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_IDS_FIELD_NUMBER: _ClassVar[int]
    CALL_SITE_FIELD_NUMBER: _ClassVar[int]
    RECREATABLE_FIELD_NUMBER: _ClassVar[int]
    RECREATED_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    data: bytes
    metadata: bytes
    name: str
    contained_ids: bytes
    call_site: str
    recreatable: bool
    recreated: bool
    def __init__(self, object_id: _Optional[bytes] = ..., data: _Optional[bytes] = ..., metadata: _Optional[bytes] = ..., name: _Optional[str] = ..., contained_ids: _Optional[bytes] = ..., call_site: _Optional[str] = ..., recreatable: _Optional[bool] = ..., recreated: _Optional[bool] = ...) -> None: ...

class Create(_message.Message):
    __slots__ = ("object_id", "data_size", "metadata", "name", "contained_ids", "call_site", "recreatable", "recreated")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_IDS_FIELD_NUMBER: _ClassVar[int]
    CALL_SITE_FIELD_NUMBER: _ClassVar[int]
    RECREATABLE_FIELD_NUMBER: _ClassVar[int]
    RECREATED_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    data_size: int
    metadata: bytes
    name: str
    contained_ids: bytes
    call_site: str
    recreatable: bool
    recreated: bool
    def __init__(self, object_id: _Optional[bytes] = ..., data_size: _Optional[int] = ..., metadata: _Optional[bytes] = ..., name: _Optional[str] = ..., contained_ids: _Optional[bytes] = ..., call_site: _Optional[str] = ..., recreatable: _Optional[bool] = ..., recreated: _Optional[bool] = ...) -> None: ...

class Seal(_message.Message):
    __slots__ = ("object_id",)
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    def __init__(self, object_id: _Optional[bytes] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("object_id",)
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    def __init__(self, object_id: _Optional[bytes] = ...) -> None: ...

class Get(_message.Message):
    __slots__ = ("object_ids", "name", "timeout_ms", "earlier_ids", "earlier_node_ids")
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    EARLIER_IDS_FIELD_NUMBER: _ClassVar[int]
    EARLIER_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    name: str
    timeout_ms: int
    earlier_ids: _containers.RepeatedScalarFieldContainer[bytes]
    earlier_node_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ..., name: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., earlier_ids: _Optional[_Iterable[bytes]] = ..., earlier_node_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("object_ids",)
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Delete(_message.Message):
    __slots__ = ("object_ids", "name")
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    name: str
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ..., name: _Optional[str] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("object_ids", "num_returns", "timeout_ms")
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_RETURNS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    num_returns: int
    timeout_ms: int
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ..., num_returns: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class Contains(_message.Message):
    __slots__ = ("object_id",)
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    def __init__(self, object_id: _Optional[bytes] = ...) -> None: ...

class Refs(_message.Message):
    __slots__ = ("added_ids", "dropped_ids", "pickled_ids", "added_sites")
    ADDED_IDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_IDS_FIELD_NUMBER: _ClassVar[int]
    PICKLED_IDS_FIELD_NUMBER: _ClassVar[int]
    ADDED_SITES_FIELD_NUMBER: _ClassVar[int]
    added_ids: bytes
    dropped_ids: bytes
    pickled_ids: bytes
    added_sites: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added_ids: _Optional[bytes] = ..., dropped_ids: _Optional[bytes] = ..., pickled_ids: _Optional[bytes] = ..., added_sites: _Optional[_Iterable[str]] = ...) -> None: ...

class Replicate(_message.Message):
    __slots__ = ("object_id", "replicas", "timeout_ms")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    replicas: int
    timeout_ms: int
    def __init__(self, object_id: _Optional[bytes] = ..., replicas: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class RecreateFailed(_message.Message):
    __slots__ = ("object_id", "message")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    message: str
    def __init__(self, object_id: _Optional[bytes] = ..., message: _Optional[str] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListObjects(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("id", "put_inline", "create", "seal", "abort", "get", "release", "delete", "wait", "contains", "stats", "list_objects", "refs", "recreate_failed", "replicate")
    ID_FIELD_NUMBER: _ClassVar[int]
    PUT_INLINE_FIELD_NUMBER: _ClassVar[int]
    CREATE_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LIST_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    RECREATE_FAILED_FIELD_NUMBER: _ClassVar[int]
    REPLICATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    put_inline: PutInline
    create: Create
    seal: Seal
    abort: Abort
    get: Get
    release: Release
    delete: Delete
    wait: Wait
    contains: Contains
    stats: Stats
    list_objects: ListObjects
    refs: Refs
    recreate_failed: RecreateFailed
    replicate: Replicate
    def __init__(self, id: _Optional[int] = ..., put_inline: _Optional[_Union[PutInline, _Mapping]] = ..., create: _Optional[_Union[Create, _Mapping]] = ..., seal: _Optional[_Union[Seal, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., get: _Optional[_Union[Get, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., delete: _Optional[_Union[Delete, _Mapping]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., contains: _Optional[_Union[Contains, _Mapping]] = ..., stats: _Optional[_Union[Stats, _Mapping]] = ..., list_objects: _Optional[_Union[ListObjects, _Mapping]] = ..., refs: _Optional[_Union[Refs, _Mapping]] = ..., recreate_failed: _Optional[_Union[RecreateFailed, _Mapping]] = ..., replicate: _Optional[_Union[Replicate, _Mapping]] = ...) -> None: ...

class PutReply(_message.Message):
    __slots__ = ("segment", "offset")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    segment: int
    offset: int
    def __init__(self, segment: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ...) -> None: ...

class DeleteReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class WaitReply(_message.Message):
    __slots__ = ("ready",)
    READY_FIELD_NUMBER: _ClassVar[int]
    ready: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ready: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ContainsReply(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: bool
    def __init__(self, present: _Optional[bool] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("node_id", "capacity", "used", "fallback_used", "pinned_bytes", "objects", "sealed", "creating", "clients", "evictable_bytes", "evictions", "largest_free", "puts", "gets", "uptime_s", "prefaulted", "directory", "pulled", "bytes_pulled", "chunks_served", "bytes_served", "spilled_objects", "spilled_bytes", "spill_files", "bytes_spilled", "restored", "bytes_restored", "spill", "spill_write_errors", "restore_errors", "spill_files_deleted", "refused_clients", "refused_peers", "relayed_pulls", "relayed_from_partial", "relay_switches", "relayed_chunks")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_USED_FIELD_NUMBER: _ClassVar[int]
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    CREATING_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    EVICTABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FREE_FIELD_NUMBER: _ClassVar[int]
    PUTS_FIELD_NUMBER: _ClassVar[int]
    GETS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    PREFAULTED_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    PULLED_FIELD_NUMBER: _ClassVar[int]
    BYTES_PULLED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_SERVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SERVED_FIELD_NUMBER: _ClassVar[int]
    SPILLED_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    SPILLED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPILL_FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_SPILLED_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RESTORED_FIELD_NUMBER: _ClassVar[int]
    SPILL_FIELD_NUMBER: _ClassVar[int]
    SPILL_WRITE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SPILL_FILES_DELETED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_PEERS_FIELD_NUMBER: _ClassVar[int]
    RELAYED_PULLS_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FROM_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    RELAY_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    RELAYED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    node_id: bytes
    capacity: int
    used: int
    fallback_used: int
    pinned_bytes: int
    objects: int
    sealed: int
    creating: int
    clients: int
    evictable_bytes: int
    evictions: int
    largest_free: int
    puts: int
    gets: int
    uptime_s: float
    prefaulted: int
    directory: str
    pulled: int
    bytes_pulled: int
    chunks_served: int
    bytes_served: int
    spilled_objects: int
    spilled_bytes: int
    spill_files: int
    bytes_spilled: int
    restored: int
    bytes_restored: int
    spill: str
    spill_write_errors: int
    restore_errors: int
    spill_files_deleted: int
    refused_clients: int
    refused_peers: int
    relayed_pulls: int
    relayed_from_partial: int
    relay_switches: int
    relayed_chunks: int
    def __init__(self, node_id: _Optional[bytes] = ..., capacity: _Optional[int] = ..., used: _Optional[int] = ..., fallback_used: _Optional[int] = ..., pinned_bytes: _Optional[int] = ..., objects: _Optional[int] = ..., sealed: _Optional[int] = ..., creating: _Optional[int] = ..., clients: _Optional[int] = ..., evictable_bytes: _Optional[int] = ..., evictions: _Optional[int] = ..., largest_free: _Optional[int] = ..., puts: _Optional[int] = ..., gets: _Optional[int] = ..., uptime_s: _Optional[float] = ..., prefaulted: _Optional[int] = ..., directory: _Optional[str] = ..., pulled: _Optional[int] = ..., bytes_pulled: _Optional[int] = ..., chunks_served: _Optional[int] = ..., bytes_served: _Optional[int] = ..., spilled_objects: _Optional[int] = ..., spilled_bytes: _Optional[int] = ..., spill_files: _Optional[int] = ..., bytes_spilled: _Optional[int] = ..., restored: _Optional[int] = ..., bytes_restored: _Optional[int] = ..., spill: _Optional[str] = ..., spill_write_errors: _Optional[int] = ..., restore_errors: _Optional[int] = ..., spill_files_deleted: _Optional[int] = ..., refused_clients: _Optional[int] = ..., refused_peers: _Optional[int] = ..., relayed_pulls: _Optional[int] = ..., relayed_from_partial: _Optional[int] = ..., relay_switches: _Optional[int] = ..., relayed_chunks: _Optional[int] = ...) -> None: ...

class ObjectSummary(_message.Message):
    __slots__ = ("object_id", "data_size", "state", "name", "primary", "pins", "segment", "metadata", "spill_url", "owner_pid", "holder_pids", "contained_in", "grace", "borrowed", "call_sites")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPILL_URL_FIELD_NUMBER: _ClassVar[int]
    OWNER_PID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_PIDS_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_IN_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    BORROWED_FIELD_NUMBER: _ClassVar[int]
    CALL_SITES_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    data_size: int
    state: str
    name: str
    primary: bool
    pins: int
    segment: int
    metadata: bytes
    spill_url: str
    owner_pid: int
    holder_pids: _containers.RepeatedScalarFieldContainer[int]
    contained_in: _containers.RepeatedScalarFieldContainer[bytes]
    grace: bool
    borrowed: bool
    call_sites: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, object_id: _Optional[bytes] = ..., data_size: _Optional[int] = ..., state: _Optional[str] = ..., name: _Optional[str] = ..., primary: _Optional[bool] = ..., pins: _Optional[int] = ..., segment: _Optional[int] = ..., metadata: _Optional[bytes] = ..., spill_url: _Optional[str] = ..., owner_pid: _Optional[int] = ..., holder_pids: _Optional[_Iterable[int]] = ..., contained_in: _Optional[_Iterable[bytes]] = ..., grace: _Optional[bool] = ..., borrowed: _Optional[bool] = ..., call_sites: _Optional[_Iterable[str]] = ...) -> None: ...

class ListReply(_message.Message):
    __slots__ = ("objects", "total")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectSummary]
    total: int
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectSummary, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class Invalidate(_message.Message):
    __slots__ = ("object_ids",)
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Recreate(_message.Message):
    __slots__ = ("object_ids",)
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("id", "error", "put", "get", "delete", "wait", "contains", "stats", "list_objects", "invalidate", "recreate")
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LIST_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    INVALIDATE_FIELD_NUMBER: _ClassVar[int]
    RECREATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    error: Error
    put: PutReply
    get: GetReply
    delete: DeleteReply
    wait: WaitReply
    contains: ContainsReply
    stats: StatsReply
    list_objects: ListReply
    invalidate: Invalidate
    recreate: Recreate
    def __init__(self, id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., put: _Optional[_Union[PutReply, _Mapping]] = ..., get: _Optional[_Union[GetReply, _Mapping]] = ..., delete: _Optional[_Union[DeleteReply, _Mapping]] = ..., wait: _Optional[_Union[WaitReply, _Mapping]] = ..., contains: _Optional[_Union[ContainsReply, _Mapping]] = ..., stats: _Optional[_Union[StatsReply, _Mapping]] = ..., list_objects: _Optional[_Union[ListReply, _Mapping]] = ..., invalidate: _Optional[_Union[Invalidate, _Mapping]] = ..., recreate: _Optional[_Union[Recreate, _Mapping]] = ...) -> None: ...
