"""moto's server (`moto_server`), with its IAM enforcement mended so that
what AWS allows and denies, moto allows and denies too. The gaps are moto
5.2.1's, the version requirements-dev.txt pins; the local runs and the
template tests start the server through this file.

- Signatures are checked against the path the client sent. moto rebuilds the
  request from its decoded URL, so an S3 key with a reserved character, such
  as the archive's `dt=`, never matched its signature.
- A batch call is authorized as the action it batches, as AWS does:
  `ChangeMessageVisibilityBatch` needs `sqs:ChangeMessageVisibility`, and so
  on. moto asked for an action of the batch's own name, which no policy
  grants.
- DynamoDB calls are checked against the table they name (or its index), as
  AWS does. moto checked them against `*`, so a policy scoped to the table
  allowed nothing and one naming another table was never denied.
- `GetQueueUrl` is checked against the queue it names, not `*`.

And one answer is given the shape S3 gives it:

- `CompleteMultipartUpload` answers with a `CompleteMultipartUploadResult`
  root element, as S3 does; moto's serializer named it
  `CompleteMultipartUploadResponse`, which the AWS SDKs refuse to parse.
"""

from urllib.parse import urlparse

from moto.core.authorization import ActionAuthenticatorMixin
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMRequestBase
from moto.s3.responses import S3Response
from moto.server import main
from moto.sqs.exceptions import QueueDoesNotExist
from moto.sqs.responses import SQSResponse

BATCHED_ACTIONS = {
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:SendMessageBatch": "sqs:SendMessage",
}

_authenticate_and_authorize = ActionAuthenticatorMixin._authenticate_and_authorize_action
_iam_request_init = IAMRequestBase.__init__
_sqs_resource = SQSResponse._determine_resource
_s3_serialized = S3Response.serialized


def _authenticate_and_authorize_as_sent(self, iam_request_cls, resource="*"):
    decoded = self.uri
    raw_path = getattr(self, "raw_path", None)
    parsed = urlparse(decoded)
    if raw_path and raw_path != parsed.path:
        self.uri = parsed._replace(path=raw_path).geturl()
    try:
        return _authenticate_and_authorize(self, iam_request_cls, resource)
    finally:
        self.uri = decoded


def _iam_request_with_batched_actions(self, *args, **kwargs):
    _iam_request_init(self, *args, **kwargs)
    self._action = BATCHED_ACTIONS.get(self._action, self._action)


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


def _s3_serialized_with_s3_roots(self, *args, **kwargs):
    status, headers, body = _s3_serialized(self, *args, **kwargs)
    if self.data.get("Action") == "CompleteMultipartUpload" and isinstance(body, (str, bytes)):
        wrong, right = "CompleteMultipartUploadResponse", "CompleteMultipartUploadResult"
        if isinstance(body, bytes):
            wrong, right = wrong.encode(), right.encode()
        body = body.replace(wrong, right)
    return status, headers, body


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_and_authorize_as_sent
IAMRequestBase.__init__ = _iam_request_with_batched_actions
DynamoHandler._determine_resource = _dynamodb_table
SQSResponse._determine_resource = _sqs_queue_also_by_name
S3Response.serialized = _s3_serialized_with_s3_roots

if __name__ == "__main__":
    main()
