"""moto's server (`moto_server`), with its IAM enforcement mended so that
what AWS allows and denies, moto allows and denies too. The gaps are moto
5.2.1's, the version requirements-dev.txt pins; the local runs and the
template tests start the server through this file.

- Signatures are checked against the path and query the client sent. moto
  rebuilds the request from its decoded URL, so an S3 key or a listing
  prefix with a reserved character, such as the archive's `dt=`, never
  matched its signature.
- A batch call is authorized as the action it batches, as AWS does:
  `ChangeMessageVisibilityBatch` needs `sqs:ChangeMessageVisibility`, and so
  on. moto asked for an action of the batch's own name, which no policy
  grants.
- DynamoDB calls are checked against the table they name (or its index), as
  AWS does. moto checked them against `*`, so a policy scoped to the table
  allowed nothing and one naming another table was never denied.
- `GetQueueUrl` is checked against the queue it names, not `*`.
- A queue's policy grants what it says, as AWS evaluates a resource policy
  within an account: a call no identity policy allows (and none denies) is
  allowed when the queue's policy allows the caller (an assumed role's
  session by its role's ARN) that action on that queue. moto read identity
  policies only, so a queue policy granting a role allowed nothing.
- A queue encrypted with a KMS key is used through that key, as SQS does:
  a send needs the sender allowed `kms:GenerateDataKey` on the key, a
  receive the receiver allowed `kms:Decrypt`. Allowed means a key policy
  statement allows the caller by its ARN, or allows the account (root) and
  an identity policy of the caller allows it too; the statement's
  conditions on `kms:ViaService` and `aws:PrincipalTag/...` are evaluated,
  any other condition makes it not apply. moto's SQS never asked KMS.
- SetQueueAttributes changes the attributes it names, as SQS does: moto
  cleared a queue's policy whenever `Policy` was not among them.
- A GET or HEAD is signed over an empty payload, as SigV4 says. moto
  hashed what it parsed of the request instead, which for Lambda's REST
  calls (`GetFunctionConfiguration`) is its headers, so no Lambda read ever
  matched its signature.
- S3 pre-signed URLs (SigV4 query authentication) are authenticated as S3
  does: the signature checked with the signer's secret, the URL refused once
  `X-Amz-Date` + `X-Amz-Expires` has passed, and the action authorized for
  the signer. moto failed every pre-signed request with a 500 (it looks for
  an `Authorization` header only).

And one answer is given the shape S3 gives it:

- `CompleteMultipartUpload` answers with a `CompleteMultipartUploadResult`
  root element, as S3 does; moto's serializer named it
  `CompleteMultipartUploadResponse`, which the AWS SDKs refuse to parse.
"""

import datetime
import fnmatch
import hashlib
import hmac
import json
from urllib.parse import parse_qsl, quote, urlparse

from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.responses import BaseResponse
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import (
    AssumedRoleAccessKey,
    IAMPolicy,
    IAMRequestBase,
    PermissionResult,
)
from moto.s3.responses import S3Response
from moto.server import main
from moto.sqs.exceptions import QueueDoesNotExist
from moto.kms.models import kms_backends
from moto.sqs.models import Queue, sqs_backends
from moto.sqs.responses import SQSResponse

BATCHED_ACTIONS = {
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:SendMessageBatch": "sqs:SendMessage",
}

_authenticate_and_authorize = ActionAuthenticatorMixin._authenticate_and_authorize_action
_iam_request_init = IAMRequestBase.__init__
_check_signature = IAMRequestBase.check_signature
_setup_class = BaseResponse.setup_class
_create_aws_request = IAMRequestBase._create_aws_request
_check_action_permitted = IAMRequestBase.check_action_permitted
_set_queue_attributes = Queue._set_attributes
_sqs_resource = SQSResponse._determine_resource
_s3_serialized = S3Response.serialized


def _setup_class_keeping_the_raw_query(self, request, full_url, headers, *args, **kwargs):
    _setup_class(self, request, full_url, headers, *args, **kwargs)
    raw_uri = getattr(request, "environ", {}).get("RAW_URI")
    self.raw_query = urlparse(raw_uri).query if raw_uri else None


def _authenticate_and_authorize_as_sent(self, iam_request_cls, resource="*"):
    decoded = self.uri
    raw_path = getattr(self, "raw_path", None)
    raw_query = getattr(self, "raw_query", None)
    parsed = urlparse(decoded)
    if raw_path and raw_path != parsed.path:
        parsed = parsed._replace(path=raw_path)
    if raw_query and raw_query != parsed.query:
        parsed = parsed._replace(query=raw_query)
    self.uri = parsed.geturl()
    try:
        return _authenticate_and_authorize(self, iam_request_cls, resource)
    finally:
        self.uri = decoded


def _iam_request_with_batched_actions(self, *args, **kwargs):
    _iam_request_init(self, *args, **kwargs)
    self._action = BATCHED_ACTIONS.get(self._action, self._action)


def _presigned_query(path):
    """The query of a SigV4 pre-signed request, or None."""
    query = dict(parse_qsl(urlparse(path).query, keep_blank_values=True))
    return query if "X-Amz-Signature" in query and "X-Amz-Credential" in query else None


def _iam_request_init_presigned_too(self, *args, **kwargs):
    headers = kwargs["headers"]
    query = _presigned_query(kwargs["path"])
    if query is not None and "Authorization" not in headers:
        # Only for moto's parsing of the credential scope; check_signature
        # checks the query's own signature.
        headers = dict(headers)
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={query['X-Amz-Credential']}, "
            f"SignedHeaders={query.get('X-Amz-SignedHeaders', 'host')}, "
            f"Signature={query['X-Amz-Signature']}"
        )
        kwargs["headers"] = headers
    _iam_request_with_batched_actions(self, *args, **kwargs)


def _check_signature_presigned_too(self):
    query = _presigned_query(self._path)
    if query is None:
        return _check_signature(self)
    signed_at = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc
    )
    expires = datetime.timedelta(seconds=int(query.get("X-Amz-Expires", "0")))
    if datetime.datetime.now(datetime.timezone.utc) > signed_at + expires:
        self._raise_access_denied()
    encode = lambda text: quote(text, safe="-_.~")  # noqa: E731
    canonical_query = "&".join(
        f"{encode(key)}={encode(value)}"
        for key, value in sorted(query.items())
        if key != "X-Amz-Signature"
    )
    signed_headers = query.get("X-Amz-SignedHeaders", "host").split(";")
    headers = {name.lower(): str(value) for name, value in self._headers.items()}
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers
    )
    canonical_request = "\n".join(
        [
            self._method,
            urlparse(self._path).path,
            canonical_query,
            canonical_headers,
            ";".join(signed_headers),
            "UNSIGNED-PAYLOAD",
        ]
    )
    access_key, day, region, service, terminal = query["X-Amz-Credential"].split("/")
    scope = f"{day}/{region}/{service}/{terminal}"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            query["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + self._access_key.create_credentials().secret_key).encode()
    for part in (day, region, service, terminal):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, query["X-Amz-Signature"]):
        self._raise_signature_does_not_match()


def _dynamodb_table(self):
    name = self._get_param("TableName")
    if not name:
        return "*"
    if name.startswith("arn:"):
        return name
    table = f"arn:{self.partition}:dynamodb:{self.region}:{self.current_account}:table/{name}"
    index = self._get_param("IndexName")
    return f"{table}/index/{index}" if index else table


def _sqs_queue_also_by_name(self):
    if self._get_action() == "GetQueueUrl":
        try:
            return self.sqs_backend.get_queue(self._get_param("QueueName")).queue_arn
        except QueueDoesNotExist:
            return "*"
    return _sqs_resource(self)


def _caller_as_a_principal(access_key):
    """The caller as a resource policy names it: a role's session by its role."""
    if isinstance(access_key, AssumedRoleAccessKey):
        return f"arn:{access_key.partition}:iam::{access_key.account_id}:role/{access_key._owner_role_name}"
    return access_key.arn


def _queue_named(resource):
    """The queue an SQS resource ARN names, and its region; (None, None)
    for `*` or a queue that does not exist."""
    if not resource.startswith("arn:"):
        return None, None
    _, _, _, region, account, name = resource.split(":", 5)
    try:
        return sqs_backends[account][region].get_queue(name), region
    except (KeyError, QueueDoesNotExist):
        return None, None


def _queue_policy_allows(request, resource):
    if not request._action.startswith("sqs:"):
        return False
    queue, _ = _queue_named(resource)
    if queue is None or not queue.policy:
        return False
    principal = _caller_as_a_principal(request._access_key)
    result = IAMPolicy(queue.policy).is_action_permitted(request._action, resource, principal)
    return result == PermissionResult.PERMITTED


def _identity_allows(request, action, resource):
    results = [
        IAMPolicy(p).is_action_permitted(action, resource) for p in request._access_key.collect_policies()
    ]
    return PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results


def _caller_tags(access_key):
    iam = access_key.backend
    if isinstance(access_key, AssumedRoleAccessKey):
        tags, _ = iam.list_role_tags(access_key._owner_role_name, None)
    else:
        tags = iam.list_user_tags(access_key._owner_user_name)
    return {tag["Key"]: tag["Value"] for tag in tags}


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _key_statement_applies(statement, request, action, key_arn, region):
    if not any(fnmatch.fnmatchcase(action, pattern) for pattern in _as_list(statement.get("Action", []))):
        return False
    principals = _as_list(statement.get("Principal", {}).get("AWS", []))
    caller = _caller_as_a_principal(request._access_key)
    account_root = f"arn:aws:iam::{request._access_key.account_id}:root"
    if caller in principals:
        pass
    elif account_root in principals:
        if not _identity_allows(request, action, key_arn):
            return False
    else:
        return False
    for operator, tests in statement.get("Condition", {}).items():
        if operator != "StringEquals":
            return False
        for name, expected in tests.items():
            if name == "kms:ViaService":
                actual = f"sqs.{region}.amazonaws.com"
            elif name.startswith("aws:PrincipalTag/"):
                actual = _caller_tags(request._access_key).get(name.split("/", 1)[1])
            else:
                return False
            if actual not in _as_list(expected):
                return False
    return True


KMS_FOR_SQS = {"sqs:SendMessage": "kms:GenerateDataKey", "sqs:ReceiveMessage": "kms:Decrypt"}


def _queue_key_allows(request, resource):
    """Whether the caller may use the key of the queue `resource` names for
    this call (True for an unencrypted queue or another action)."""
    action = KMS_FOR_SQS.get(request._action)
    queue, region = _queue_named(resource)
    if action is None or queue is None:
        return True
    key_id = getattr(queue, "kms_master_key_id", None)
    if not key_id or key_id == "alias/aws/sqs":
        return True
    key = kms_backends[queue.account_id][region].describe_key(key_id)
    # moto keeps the policy CloudFormation gave as a dict, PutKeyPolicy's as text.
    policy = key.policy if isinstance(key.policy, dict) else json.loads(key.policy)
    statements = policy["Statement"]
    applying = [s for s in statements if _key_statement_applies(s, request, action, key.arn, region)]
    return any(s["Effect"] == "Allow" for s in applying) and not any(
        s["Effect"] == "Deny" for s in applying
    )


def _check_action_permitted_with_queue_policies(self, resource):
    identity = [IAMPolicy(p).is_action_permitted(self._action, resource) for p in self._access_key.collect_policies()]
    if PermissionResult.DENIED not in identity and PermissionResult.PERMITTED not in identity:
        if _queue_policy_allows(self, resource):
            if not _queue_key_allows(self, resource):
                self._raise_access_denied()
            return
    _check_action_permitted(self, resource)
    if not _queue_key_allows(self, resource):
        self._raise_access_denied()


def _set_queue_attributes_keeping_the_policy(self, attributes, *args, **kwargs):
    # A queue being created has no policy yet.
    kept = self.policy if hasattr(self, "_policy_json") else None
    _set_queue_attributes(self, attributes, *args, **kwargs)
    if "Policy" not in attributes and kept:
        self.policy = kept


def _s3_serialized_with_s3_roots(self, *args, **kwargs):
    status, headers, body = _s3_serialized(self, *args, **kwargs)
    if self.data.get("Action") == "CompleteMultipartUpload" and isinstance(body, (str, bytes)):
        wrong, right = "CompleteMultipartUploadResponse", "CompleteMultipartUploadResult"
        if isinstance(body, bytes):
            wrong, right = wrong.encode(), right.encode()
        body = body.replace(wrong, right)
    return status, headers, body


def _aws_request_of_an_empty_body_too(self):
    if self._method not in ("GET", "HEAD") or self._body:
        return _create_aws_request(self)
    parsed, self._data = self._data, b""
    try:
        return _create_aws_request(self)
    finally:
        self._data = parsed


BaseResponse.setup_class = _setup_class_keeping_the_raw_query
ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_and_authorize_as_sent
IAMRequestBase._create_aws_request = _aws_request_of_an_empty_body_too
IAMRequestBase.__init__ = _iam_request_init_presigned_too
IAMRequestBase.check_signature = _check_signature_presigned_too
IAMRequestBase.check_action_permitted = _check_action_permitted_with_queue_policies
Queue._set_attributes = _set_queue_attributes_keeping_the_policy
DynamoHandler._determine_resource = _dynamodb_table
SQSResponse._determine_resource = _sqs_queue_also_by_name
S3Response.serialized = _s3_serialized_with_s3_roots

if __name__ == "__main__":
    main()
