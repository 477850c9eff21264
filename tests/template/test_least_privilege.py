"""Least privilege, proven by running: the stacks from template.yaml and
kafka/template.yaml in a moto
server, its policies restored (see dev/local_stack.py), then IAM enforcement
switched on (`/moto-api/reset-auth`), and the identities the template creates
calling what they may and may not. The server is dev/moto_server.py: moto
with the gaps in its IAM checks mended (S3 keys with `=`, batch actions,
DynamoDB tables, GetQueueUrl)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import boto3
import botocore.exceptions
import pytest

import local_stack
from local_stack import Endpoint, Stack, enforce_iam

# moto's server with its IAM enforcement mended (see the file).
MOTO_SERVER = [sys.executable, str(local_stack.ROOT / "dev" / "moto_server.py")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server():
    port = free_port()
    server = subprocess.Popen(
        [*MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def as_role(moto_server, credentials):
    """The endpoint as the role whose assumed `credentials` these are."""
    return Endpoint(
        moto_server,
        credentials["AccessKeyId"],
        credentials["SecretAccessKey"],
        credentials["SessionToken"],
    )


def denied(call):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    response = raised.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403, response


def terra_may_only_send(moto_server, terra, outputs, other_queue):
    """What Terra's credentials may do once IAM is enforced: send to its
    queue and look it up, nothing else."""
    sqs = terra.client("sqs")
    queue_name = outputs["QueueUrl"].rsplit("/", 1)[1]
    assert sqs.get_queue_url(QueueName=queue_name)["QueueUrl"].endswith(queue_name)
    denied(lambda: sqs.get_queue_url(QueueName="not-terras"))
    sqs.send_message(QueueUrl=outputs["QueueUrl"], MessageBody='{"type":"healthcheck"}')
    denied(lambda: sqs.receive_message(QueueUrl=outputs["QueueUrl"]))
    denied(lambda: sqs.purge_queue(QueueUrl=outputs["QueueUrl"]))
    denied(lambda: sqs.set_queue_attributes(QueueUrl=outputs["QueueUrl"], Attributes={"DelaySeconds": "1"}))
    denied(lambda: sqs.send_message(QueueUrl=other_queue, MessageBody="{}"))
    denied(lambda: sqs.send_message(QueueUrl=outputs["DeadLetterQueueUrl"], MessageBody="{}"))
    denied(lambda: terra.client("s3").list_objects_v2(Bucket=outputs["BucketName"]))
    denied(
        lambda: terra.client("s3").put_object(Bucket=outputs["BucketName"], Key="terra/x.json", Body=b"{}")
    )
    item = {"pk": {"S": "USER#1"}, "sk": {"S": "PROFILE"}}
    denied(lambda: terra.client("dynamodb").get_item(TableName=outputs["TableName"], Key=item))
    denied(lambda: terra.client("dynamodb").put_item(TableName=outputs["TableName"], Item=item))


def test_terras_role_can_send_to_its_queue_and_nothing_else(moto_server):
    """The default: Terra's principal is let in by the queue policy alone.
    The stand-in role has no policy of its own, so every call it makes is
    decided by the stack's resource policies."""
    admin = Endpoint(moto_server)
    role = local_stack.terra_stand_in(admin)
    stack = Stack(admin, overrides={"TerraAccess": role})
    stack.restore_policies()
    outputs = stack.outputs
    assert "TerraSenderUserName" not in outputs
    assert admin.client("iam").list_users()["Users"] == [], "no IAM user for Terra"
    other_queue = admin.client("sqs").create_queue(QueueName="not-terras")["QueueUrl"]
    terra = local_stack.as_terra(admin, {"role": role, "user": None})

    enforce_iam(moto_server)

    terra_may_only_send(
        moto_server,
        Endpoint(moto_server, terra["access_key_id"], terra["secret_access_key"], terra["session_token"]),
        outputs,
        other_queue,
    )


def test_without_the_queue_policy_terras_role_cannot_send(moto_server):
    """The grant is the queue policy's: the same role, the policy removed,
    is refused."""
    admin = Endpoint(moto_server)
    role = local_stack.terra_stand_in(admin)
    stack = Stack(admin, overrides={"TerraAccess": role})
    stack.restore_policies()
    admin.client("sqs").set_queue_attributes(QueueUrl=stack.outputs["QueueUrl"], Attributes={"Policy": ""})
    terra = local_stack.as_terra(admin, {"role": role, "user": None})
    enforce_iam(moto_server)
    sqs = Endpoint(moto_server, terra["access_key_id"], terra["secret_access_key"], terra["session_token"]).client(
        "sqs"
    )
    denied(lambda: sqs.send_message(QueueUrl=stack.outputs["QueueUrl"], MessageBody="{}"))


def test_terras_access_key_user_can_send_to_its_queue_and_nothing_else(moto_server):
    stack = Stack(Endpoint(moto_server), overrides={"TerraAccess": "access-key"})
    stack.restore_policies()
    admin, outputs = stack.admin, stack.outputs
    key = local_stack.as_terra(admin, {"role": None, "user": outputs["TerraSenderUserName"]})
    other_queue = admin.client("sqs").create_queue(QueueName="not-terras")["QueueUrl"]

    enforce_iam(moto_server)

    terra_may_only_send(
        moto_server, Endpoint(moto_server, key["access_key_id"], key["secret_access_key"]), outputs, other_queue
    )


def archive_as_the_handlers_do(s3, bucket, prefix):
    """Writes and reads the archive as both handlers do, and is denied
    outside the prefix; returns the key of an object it wrote."""
    archived = f"{prefix}dt=2026-11-30/type=activity/archived.json"
    s3.put_object(Bucket=bucket, Key=archived, Body=b"{}")
    s3.get_object(Bucket=bucket, Key=archived)
    # A large payload streams in as a multipart upload: completed, or aborted
    # when it proves invalid; metadata known only at its end is set by a copy
    # onto itself.
    streamed = f"{prefix}dt=2026-11-30/streamed.json"
    for complete in (True, False):
        upload = s3.create_multipart_upload(Bucket=bucket, Key=streamed)["UploadId"]
        part = s3.upload_part(
            Bucket=bucket, Key=streamed, UploadId=upload, PartNumber=1, Body=b"{}"
        )
        if complete:
            s3.complete_multipart_upload(
                Bucket=bucket,
                Key=streamed,
                UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            )
        else:
            s3.abort_multipart_upload(Bucket=bucket, Key=streamed, UploadId=upload)
    s3.copy_object(
        Bucket=bucket,
        Key=streamed,
        CopySource={"Bucket": bucket, "Key": streamed},
        MetadataDirective="REPLACE",
        Metadata={"terra-type": "sleep"},
    )
    denied(lambda: s3.create_multipart_upload(Bucket=bucket, Key="outside/streamed.json"))
    denied(lambda: s3.put_object(Bucket=bucket, Key="outside/archived.json", Body=b"{}"))
    return archived


def test_the_sqs_handler_role_may_do_what_the_code_calls_and_no_more(moto_server):
    stack = Stack(Endpoint(moto_server))
    stack.restore_policies()
    admin, outputs = stack.admin, stack.outputs
    credentials = stack.role_credentials("SqsHandlerRole")
    admin.client("sqs").send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}")
    admin.client("dynamodb").create_table(
        TableName="not-terras",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    enforce_iam(moto_server)

    def as_role(name):
        return boto3.client(
            name,
            endpoint_url=moto_server,
            region_name="us-east-1",
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )

    sqs = as_role("sqs")
    # The mapping's calls and the function's own (see docs/guarantees.md's retry
    # schedule).
    (message,) = sqs.receive_message(QueueUrl=outputs["QueueUrl"])["Messages"]
    sqs.get_queue_attributes(
        QueueUrl=outputs["QueueUrl"], AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
    )
    # Authorized as sqs:ChangeMessageVisibility, as AWS does.
    sqs.change_message_visibility_batch(
        QueueUrl=outputs["QueueUrl"],
        Entries=[{"Id": "1", "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 30}],
    )
    sqs.delete_message(QueueUrl=outputs["QueueUrl"], ReceiptHandle=message["ReceiptHandle"])
    denied(lambda: sqs.send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}"))
    denied(lambda: sqs.receive_message(QueueUrl=outputs["DeadLetterQueueUrl"]))

    s3 = as_role("s3")
    bucket, prefix = outputs["BucketName"], stack.setting("S3Prefix")
    archived = archive_as_the_handlers_do(s3, bucket, prefix)
    s3.head_object(Bucket=bucket, Key=archived)
    denied(lambda: s3.delete_object(Bucket=bucket, Key=archived))

    dynamodb = as_role("dynamodb")
    item = {"pk": {"S": "user#1"}, "sk": {"S": "activity#1"}}
    dynamodb.put_item(TableName=outputs["TableName"], Item=item)
    merge_profile(dynamodb, outputs["TableName"])
    denied(lambda: dynamodb.put_item(TableName="not-terras", Item=item))
    denied(lambda: merge_profile(dynamodb, "not-terras"))
    denied(lambda: dynamodb.get_item(TableName=outputs["TableName"], Key=item))
    denied(lambda: dynamodb.delete_item(TableName=outputs["TableName"], Key=item))
    denied(lambda: dynamodb.get_item(TableName="not-terras", Key=item))


def merge_profile(dynamodb, table):
    """A user's PROFILE item as the handlers write it: merged, not replaced."""
    dynamodb.update_item(
        TableName=table,
        Key={"pk": {"S": "user#1"}, "sk": {"S": "PROFILE"}},
        UpdateExpression="SET #a = :a",
        ConditionExpression="attribute_not_exists(pk) OR terra_sent_at <= :incoming",
        ExpressionAttributeNames={"#a": "active"},
        ExpressionAttributeValues={":a": {"BOOL": True}, ":incoming": {"N": "1"}},
    )


def test_a_source_bucket_is_read_and_copied_from_never_written(moto_server):
    stack = Stack(Endpoint(moto_server), overrides={"Settings": "TerraSourceBucket=terra-drop"})
    stack.restore_policies()
    admin, outputs = stack.admin, stack.outputs
    s3_admin = admin.client("s3")
    for bucket in ("terra-drop", "not-terras"):
        s3_admin.create_bucket(Bucket=bucket)
        s3_admin.put_object(Bucket=bucket, Key="payloads/a.json", Body=b'{"type":"activity"}')
    credentials = stack.role_credentials("SqsHandlerRole")
    enforce_iam(moto_server)
    s3 = as_role(moto_server, credentials).client("s3")

    # What own-bucket mode calls: the version, the envelope's start or the
    # whole payload, and a copy into the archive.
    s3.head_object(Bucket="terra-drop", Key="payloads/a.json")
    s3.get_object(Bucket="terra-drop", Key="payloads/a.json", Range="bytes=0-9")
    s3.get_object(Bucket="terra-drop", Key="payloads/a.json")
    s3.copy_object(
        Bucket=outputs["BucketName"],
        Key=f"{stack.setting('S3Prefix')}dt=2026-11-30/copied.json",
        CopySource={"Bucket": "terra-drop", "Key": "payloads/a.json"},
        MetadataDirective="REPLACE",
        Metadata={"terra-type": "activity"},
    )
    denied(lambda: s3.put_object(Bucket="terra-drop", Key="payloads/b.json", Body=b"{}"))
    denied(lambda: s3.delete_object(Bucket="terra-drop", Key="payloads/a.json"))
    denied(lambda: s3.get_object(Bucket="not-terras", Key="payloads/a.json"))


KAFKA = {
    "KafkaBrokers": "b-1.kafka.internal:9096",
    "KafkaSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:terra-kafka-AbCdEf",
    "Settings": "KafkaPartialBatch=true",
}


def test_the_kafka_handler_role_may_do_what_the_code_calls_and_no_more(moto_server):
    # moto cannot create the Kafka mapping; the role is what is checked here.
    stack = Stack(
        Endpoint(moto_server),
        overrides=KAFKA,
        without=(local_stack.KAFKA_MAPPING,),
        path=local_stack.KAFKA_TEMPLATE,
    )
    stack.restore_policies()
    outputs = stack.outputs
    credentials = stack.role_credentials("KafkaHandlerRole")
    enforce_iam(moto_server)
    role = as_role(moto_server, credentials)

    sqs = role.client("sqs")
    # Its own quarantine, and the mapping's records of discarded batches.
    sqs.send_message(QueueUrl=outputs["KafkaQuarantineQueueUrl"], MessageBody="{}")
    sqs.send_message(QueueUrl=outputs["KafkaDiscardedBatchesQueueUrl"], MessageBody="{}")
    denied(lambda: sqs.receive_message(QueueUrl=outputs["KafkaQuarantineQueueUrl"]))
    denied(lambda: sqs.receive_message(QueueUrl=outputs["KafkaDiscardedBatchesQueueUrl"]))

    s3 = role.client("s3")
    bucket, prefix = outputs["BucketName"], stack.setting("S3Prefix")
    archive_as_the_handlers_do(s3, bucket, prefix)

    dynamodb = role.client("dynamodb")
    item = {"pk": {"S": "user#1"}, "sk": {"S": "activity#1"}}
    dynamodb.put_item(TableName=outputs["TableName"], Item=item)
    merge_profile(dynamodb, outputs["TableName"])
    denied(lambda: dynamodb.get_item(TableName=outputs["TableName"], Key=item))


def test_with_the_created_key_terra_sends_through_its_key_grant_alone(moto_server):
    """KmsKey=create encrypts Terra's queue with the stack's key: Terra's
    role sends because the key policy grants it a data key (via SQS only),
    the function's role receives because it is this stack's (tagged) and
    asks for the key; without Terra's grant the send fails. moto_server.py
    makes SQS ask KMS as AWS does; what moto cannot show (S3, DynamoDB and
    Logs using the key) only AWS can."""
    admin = Endpoint(moto_server)
    role = local_stack.terra_stand_in(admin)
    stack = Stack(admin, overrides={"TerraAccess": role, "KmsKey": "create"})
    stack.restore_policies()
    outputs = stack.outputs
    sqs_admin = admin.client("sqs")
    key_arn = sqs_admin.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["KmsMasterKeyId"])[
        "Attributes"
    ]["KmsMasterKeyId"]
    kms = admin.client("kms")
    policy = kms.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    # moto answers the policy CloudFormation gave as an object, KMS as text.
    policy = policy if isinstance(policy, dict) else json.loads(policy)
    terra = local_stack.as_terra(admin, {"role": role, "user": None})
    function = stack.role_credentials("SqsHandlerRole")
    # The account's key administrator, who may change the key's policy.
    iam = admin.client("iam")
    iam.create_user(UserName="key-admin")
    iam.put_user_policy(
        UserName="key-admin",
        PolicyName="administer-keys",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:PutKeyPolicy", "Resource": "*"}]}
        ),
    )
    key_admin = iam.create_access_key(UserName="key-admin")["AccessKey"]
    enforce_iam(moto_server)

    as_terra = Endpoint(moto_server, terra["access_key_id"], terra["secret_access_key"], terra["session_token"])
    as_terra.client("sqs").send_message(QueueUrl=outputs["QueueUrl"], MessageBody='{"type":"healthcheck"}')
    as_function = as_role(moto_server, function).client("sqs")
    assert as_function.receive_message(QueueUrl=outputs["QueueUrl"]).get("Messages")

    # Terra's grant removed, the same role is refused the same send.
    without_terra = [s for s in policy["Statement"] if s.get("Sid") != "TerraSendsToTheQueue"]
    assert len(without_terra) == len(policy["Statement"]) - 1
    Endpoint(moto_server, key_admin["AccessKeyId"], key_admin["SecretAccessKey"]).client("kms").put_key_policy(
        KeyId=key_arn, PolicyName="default", Policy=json.dumps(dict(policy, Statement=without_terra))
    )
    denied(lambda: as_terra.client("sqs").send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}"))
