"""Least privilege, proven by running: the stacks from template.yaml and
kafka/template.yaml in a moto
server, its policies restored (see dev/local_stack.py), then IAM enforcement
switched on (`/moto-api/reset-auth`), and the identities the template creates
calling what they may and may not. The server is dev/moto_server.py: moto
with the gaps in its IAM checks mended (S3 keys with `=`, batch actions,
DynamoDB tables, GetQueueUrl)."""

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


def test_terra_can_send_to_its_queue_and_nothing_else(moto_server):
    stack = Stack(Endpoint(moto_server))
    stack.restore_policies()
    admin, outputs = stack.admin, stack.outputs
    user = outputs["TerraSenderUserName"]
    key = admin.client("iam").create_access_key(UserName=user)["AccessKey"]
    other_queue = admin.client("sqs").create_queue(QueueName="not-terras")["QueueUrl"]
    admin.client("sqs").send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}")

    enforce_iam(moto_server)

    terra = Endpoint(moto_server, key["AccessKeyId"], key["SecretAccessKey"]).client("sqs")
    queue_name = outputs["QueueUrl"].rsplit("/", 1)[1]
    assert terra.get_queue_url(QueueName=queue_name)["QueueUrl"].endswith(queue_name)
    denied(lambda: terra.get_queue_url(QueueName="not-terras"))
    terra.send_message(QueueUrl=outputs["QueueUrl"], MessageBody='{"type":"healthcheck"}')
    denied(lambda: terra.receive_message(QueueUrl=outputs["QueueUrl"]))
    denied(lambda: terra.purge_queue(QueueUrl=outputs["QueueUrl"]))
    denied(lambda: terra.send_message(QueueUrl=other_queue, MessageBody="{}"))
    denied(lambda: terra.send_message(QueueUrl=outputs["DeadLetterQueueUrl"], MessageBody="{}"))
    s3 = Endpoint(moto_server, key["AccessKeyId"], key["SecretAccessKey"]).client("s3")
    denied(lambda: s3.list_objects_v2(Bucket=outputs["BucketName"]))


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
    stack = Stack(Endpoint(moto_server), overrides={"TerraSourceBucket": "terra-drop"})
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
