from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STATE_UNSPECIFIED: _ClassVar[RoundState]
    ROUND_STATE_OPEN: _ClassVar[RoundState]
    ROUND_STATE_CLOSED: _ClassVar[RoundState]
    ROUND_STATE_FAILED: _ClassVar[RoundState]

class RevealedKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVEALED_KIND_UNSPECIFIED: _ClassVar[RevealedKind]
    REVEALED_KIND_SELF_MASK: _ClassVar[RevealedKind]
    REVEALED_KIND_MASK_KEY: _ClassVar[RevealedKind]
ROUND_STATE_UNSPECIFIED: RoundState
ROUND_STATE_OPEN: RoundState
ROUND_STATE_CLOSED: RoundState
ROUND_STATE_FAILED: RoundState
REVEALED_KIND_UNSPECIFIED: RevealedKind
REVEALED_KIND_SELF_MASK: RevealedKind
REVEALED_KIND_MASK_KEY: RevealedKind

class GetFederationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetFederationResponse(_message.Message):
    __slots__ = ("federation_id", "roster", "keyholder_id", "quorum", "round_timeout_s", "ckks_context_fingerprint", "ckks_params_fingerprint", "model_fingerprint", "layer_map_fingerprint", "max_payload_bytes", "chunk_bytes", "protocol_version", "rounds", "protocol_plan")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    KEYHOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    ROUND_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CKKS_CONTEXT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CKKS_PARAMS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAYER_MAP_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_PLAN_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    roster: _containers.RepeatedScalarFieldContainer[str]
    keyholder_id: str
    quorum: int
    round_timeout_s: float
    ckks_context_fingerprint: str
    ckks_params_fingerprint: str
    model_fingerprint: str
    layer_map_fingerprint: str
    max_payload_bytes: int
    chunk_bytes: int
    protocol_version: str
    rounds: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    protocol_plan: str
    def __init__(self, federation_id: _Optional[str] = ..., roster: _Optional[_Iterable[str]] = ..., keyholder_id: _Optional[str] = ..., quorum: _Optional[int] = ..., round_timeout_s: _Optional[float] = ..., ckks_context_fingerprint: _Optional[str] = ..., ckks_params_fingerprint: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., layer_map_fingerprint: _Optional[str] = ..., max_payload_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., protocol_version: _Optional[str] = ..., rounds: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ..., protocol_plan: _Optional[str] = ...) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round_id", "state", "contributions")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    state: RoundState
    contributions: int
    def __init__(self, round_id: _Optional[str] = ..., state: _Optional[_Union[RoundState, str]] = ..., contributions: _Optional[int] = ...) -> None: ...

class AnnounceKeyRequest(_message.Message):
    __slots__ = ("federation_id", "x25519_public", "signature", "certificate_pem", "mask_x25519_public", "mask_signature")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    MASK_X25519_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    MASK_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    x25519_public: bytes
    signature: bytes
    certificate_pem: str
    mask_x25519_public: bytes
    mask_signature: bytes
    def __init__(self, federation_id: _Optional[str] = ..., x25519_public: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate_pem: _Optional[str] = ..., mask_x25519_public: _Optional[bytes] = ..., mask_signature: _Optional[bytes] = ...) -> None: ...

class AnnounceKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeyAnnouncementsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeyAnnouncement(_message.Message):
    __slots__ = ("participant_id", "x25519_public", "signature", "certificate_pem", "mask_x25519_public", "mask_signature")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    MASK_X25519_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    MASK_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    x25519_public: bytes
    signature: bytes
    certificate_pem: str
    mask_x25519_public: bytes
    mask_signature: bytes
    def __init__(self, participant_id: _Optional[str] = ..., x25519_public: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate_pem: _Optional[str] = ..., mask_x25519_public: _Optional[bytes] = ..., mask_signature: _Optional[bytes] = ...) -> None: ...

class ListKeyAnnouncementsResponse(_message.Message):
    __slots__ = ("announcements",)
    ANNOUNCEMENTS_FIELD_NUMBER: _ClassVar[int]
    announcements: _containers.RepeatedCompositeFieldContainer[KeyAnnouncement]
    def __init__(self, announcements: _Optional[_Iterable[_Union[KeyAnnouncement, _Mapping]]] = ...) -> None: ...

class SealedKey(_message.Message):
    __slots__ = ("recipient_id", "sealed_secret_context")
    RECIPIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_SECRET_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    recipient_id: str
    sealed_secret_context: bytes
    def __init__(self, recipient_id: _Optional[str] = ..., sealed_secret_context: _Optional[bytes] = ...) -> None: ...

class PublishKeysRequest(_message.Message):
    __slots__ = ("federation_id", "public_context", "ckks_params_fingerprint", "model_fingerprint", "layer_map_fingerprint", "sealed_keys", "encrypted_secret_context", "protocol_plan")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CKKS_PARAMS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAYER_MAP_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SEALED_KEYS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_SECRET_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_PLAN_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    public_context: bytes
    ckks_params_fingerprint: str
    model_fingerprint: str
    layer_map_fingerprint: str
    sealed_keys: _containers.RepeatedCompositeFieldContainer[SealedKey]
    encrypted_secret_context: bytes
    protocol_plan: str
    def __init__(self, federation_id: _Optional[str] = ..., public_context: _Optional[bytes] = ..., ckks_params_fingerprint: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., layer_map_fingerprint: _Optional[str] = ..., sealed_keys: _Optional[_Iterable[_Union[SealedKey, _Mapping]]] = ..., encrypted_secret_context: _Optional[bytes] = ..., protocol_plan: _Optional[str] = ...) -> None: ...

class PublishKeysResponse(_message.Message):
    __slots__ = ("ckks_context_fingerprint",)
    CKKS_CONTEXT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ckks_context_fingerprint: str
    def __init__(self, ckks_context_fingerprint: _Optional[str] = ...) -> None: ...

class FetchSealedKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchSealedKeyResponse(_message.Message):
    __slots__ = ("keyholder_id", "keyholder_certificate_pem", "ckks_context_fingerprint", "sealed_secret_context", "encrypted_secret_context")
    KEYHOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    KEYHOLDER_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CKKS_CONTEXT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SEALED_SECRET_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_SECRET_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    keyholder_id: str
    keyholder_certificate_pem: str
    ckks_context_fingerprint: str
    sealed_secret_context: bytes
    encrypted_secret_context: bytes
    def __init__(self, keyholder_id: _Optional[str] = ..., keyholder_certificate_pem: _Optional[str] = ..., ckks_context_fingerprint: _Optional[str] = ..., sealed_secret_context: _Optional[bytes] = ..., encrypted_secret_context: _Optional[bytes] = ...) -> None: ...

class ContributionHeader(_message.Message):
    __slots__ = ("federation_id", "round_id", "model_fingerprint", "layer_map_fingerprint", "ckks_context_fingerprint", "vector_length", "num_ciphertexts", "payload_bytes", "payload_sha256", "kind", "mask_shares")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAYER_MAP_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CKKS_CONTEXT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NUM_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round_id: str
    model_fingerprint: str
    layer_map_fingerprint: str
    ckks_context_fingerprint: str
    vector_length: int
    num_ciphertexts: int
    payload_bytes: int
    payload_sha256: bytes
    kind: str
    mask_shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    def __init__(self, federation_id: _Optional[str] = ..., round_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., layer_map_fingerprint: _Optional[str] = ..., ckks_context_fingerprint: _Optional[str] = ..., vector_length: _Optional[int] = ..., num_ciphertexts: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ..., kind: _Optional[str] = ..., mask_shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ...) -> None: ...

class SubmitContributionRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ContributionHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ContributionHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class SubmitContributionResponse(_message.Message):
    __slots__ = ("round_id", "payload_sha256", "duplicate", "contributions", "state")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    payload_sha256: bytes
    duplicate: bool
    contributions: int
    state: RoundState
    def __init__(self, round_id: _Optional[str] = ..., payload_sha256: _Optional[bytes] = ..., duplicate: _Optional[bool] = ..., contributions: _Optional[int] = ..., state: _Optional[_Union[RoundState, str]] = ...) -> None: ...

class GetRoundRequest(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    def __init__(self, round_id: _Optional[str] = ...) -> None: ...

class GetRoundResponse(_message.Message):
    __slots__ = ("round_id", "state", "contributions", "quorum", "deadline_unix_s", "vector_length", "aggregate_sha256", "contributed")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    state: RoundState
    contributions: int
    quorum: int
    deadline_unix_s: float
    vector_length: int
    aggregate_sha256: bytes
    contributed: bool
    def __init__(self, round_id: _Optional[str] = ..., state: _Optional[_Union[RoundState, str]] = ..., contributions: _Optional[int] = ..., quorum: _Optional[int] = ..., deadline_unix_s: _Optional[float] = ..., vector_length: _Optional[int] = ..., aggregate_sha256: _Optional[bytes] = ..., contributed: _Optional[bool] = ...) -> None: ...

class SealedShare(_message.Message):
    __slots__ = ("owner_id", "recipient_id", "sealed")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    recipient_id: str
    sealed: bytes
    def __init__(self, owner_id: _Optional[str] = ..., recipient_id: _Optional[str] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class DepositMaskSharesRequest(_message.Message):
    __slots__ = ("federation_id", "shares")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    def __init__(self, federation_id: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ...) -> None: ...

class DepositMaskSharesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("revealer_id", "owner_id", "kind", "share")
    REVEALER_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    revealer_id: str
    owner_id: str
    kind: RevealedKind
    share: bytes
    def __init__(self, revealer_id: _Optional[str] = ..., owner_id: _Optional[str] = ..., kind: _Optional[_Union[RevealedKind, str]] = ..., share: _Optional[bytes] = ...) -> None: ...

class GetMaskSharesRequest(_message.Message):
    __slots__ = ("round_id", "omit_revealed")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    OMIT_REVEALED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    omit_revealed: bool
    def __init__(self, round_id: _Optional[str] = ..., omit_revealed: _Optional[bool] = ...) -> None: ...

class GetMaskSharesResponse(_message.Message):
    __slots__ = ("contributors", "sealed", "revealed", "retired", "revealers")
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    REVEALED_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    REVEALERS_FIELD_NUMBER: _ClassVar[int]
    contributors: _containers.RepeatedScalarFieldContainer[str]
    sealed: _containers.RepeatedCompositeFieldContainer[SealedShare]
    revealed: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    retired: _containers.RepeatedScalarFieldContainer[str]
    revealers: int
    def __init__(self, contributors: _Optional[_Iterable[str]] = ..., sealed: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ..., revealed: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., retired: _Optional[_Iterable[str]] = ..., revealers: _Optional[int] = ...) -> None: ...

class RevealMaskSharesRequest(_message.Message):
    __slots__ = ("round_id", "shares")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, round_id: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class RevealMaskSharesResponse(_message.Message):
    __slots__ = ("revealers",)
    REVEALERS_FIELD_NUMBER: _ClassVar[int]
    revealers: int
    def __init__(self, revealers: _Optional[int] = ...) -> None: ...

class DownloadAggregateRequest(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    def __init__(self, round_id: _Optional[str] = ...) -> None: ...

class AggregateHeader(_message.Message):
    __slots__ = ("round_id", "contributions", "vector_length", "num_ciphertexts", "payload_bytes", "payload_sha256", "ckks_context_fingerprint", "kind")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NUM_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    CKKS_CONTEXT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    contributions: int
    vector_length: int
    num_ciphertexts: int
    payload_bytes: int
    payload_sha256: bytes
    ckks_context_fingerprint: str
    kind: str
    def __init__(self, round_id: _Optional[str] = ..., contributions: _Optional[int] = ..., vector_length: _Optional[int] = ..., num_ciphertexts: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ..., ckks_context_fingerprint: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class DownloadAggregateResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AggregateHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[AggregateHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("task_id", "task_name", "model_fingerprint", "layer_map_fingerprint", "ckks_context_fingerprint", "vector_length", "coefficient_count", "num_ciphertexts", "payload_bytes", "payload_sha256", "metadata_json", "stored_by", "stored_at_unix_s")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAYER_MAP_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CKKS_CONTEXT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    NUM_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    STORED_BY_FIELD_NUMBER: _ClassVar[int]
    STORED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_name: str
    model_fingerprint: str
    layer_map_fingerprint: str
    ckks_context_fingerprint: str
    vector_length: int
    coefficient_count: int
    num_ciphertexts: int
    payload_bytes: int
    payload_sha256: bytes
    metadata_json: str
    stored_by: str
    stored_at_unix_s: float
    def __init__(self, task_id: _Optional[str] = ..., task_name: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., layer_map_fingerprint: _Optional[str] = ..., ckks_context_fingerprint: _Optional[str] = ..., vector_length: _Optional[int] = ..., coefficient_count: _Optional[int] = ..., num_ciphertexts: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ..., metadata_json: _Optional[str] = ..., stored_by: _Optional[str] = ..., stored_at_unix_s: _Optional[float] = ...) -> None: ...

class PutTaskRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PutTaskResponse(_message.Message):
    __slots__ = ("task_id", "duplicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    duplicate: bool
    def __init__(self, task_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskHeader]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskHeader, _Mapping]]] = ...) -> None: ...
