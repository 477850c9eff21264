"""Least privilege, proven by running: the stack from template.yaml in a moto
server, then IAM enforcement switched on (`/moto-api/reset-auth`), and the
identities the template creates calling what they may and may not.

moto 5.2's CloudFormation drops an IAM user's inline `Policies`, so the
template's own document is put back through the IAM API, with the one
reference it holds (the queue's ARN) resolved from the stack's outputs. moto
checks `sqs:GetQueueUrl` against resource `*` (AWS checks the queue), so that
one allowed call is not exercised here."""

import json
import os
import socket
import subprocess
import time
import urllib.request
import warnings

import boto3
import botocore.exceptions
import pytest

import local_stack

MOTO_SERVER = os.environ.get("MOTO_SERVER") or str(
    local_stack.ROOT / ".venv" / "bin" / "moto_server"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    """boto3 clients for one moto server, with the given credentials."""

    def __init__(self, url, key="testing", secret="testing"):
        self.url, self.key, self.secret = url, key, secret

    def client(self, name):
        return boto3.client(
            name,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )


@pytest.fixture
def moto_server():
    port = free_port()
    server = subprocess.Popen(
        [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
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


def resolve(node, references):
    if isinstance(node, dict):
        if set(node) == {"Fn::GetAtt"}:
            return references[tuple(node["Fn::GetAtt"])]
        return {k: resolve(v, references) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, references) for v in node]
    return node


def denied(call):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    response = raised.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403, response


def test_terra_can_send_to_its_queue_and_nothing_else(moto_server):
    admin = Endpoint(moto_server)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        outputs = local_stack.deploy(admin)
    template, _ = local_stack.resolved_template()
    user = outputs["TerraSenderUserName"]
    references = {("EventsQueue", "Arn"): outputs["QueueArn"]}
    iam = admin.client("iam")
    for policy in template["Resources"]["TerraSenderUser"]["Properties"]["Policies"]:
        iam.put_user_policy(
            UserName=user,
            PolicyName=policy["PolicyName"],
            PolicyDocument=json.dumps(resolve(policy["PolicyDocument"], references)),
        )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    other_queue = admin.client("sqs").create_queue(QueueName="not-terras")["QueueUrl"]
    admin.client("sqs").send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}")

    request = urllib.request.Request(
        moto_server + "/moto-api/reset-auth",
        data=b"0",
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5)

    terra = Endpoint(moto_server, key["AccessKeyId"], key["SecretAccessKey"]).client("sqs")
    # GetQueueUrl, which the policy allows on the queue, is not tried: moto
    # checks it against resource "*", which AWS does not.
    terra.send_message(QueueUrl=outputs["QueueUrl"], MessageBody='{"type":"healthcheck"}')
    denied(lambda: terra.receive_message(QueueUrl=outputs["QueueUrl"]))
    denied(lambda: terra.purge_queue(QueueUrl=outputs["QueueUrl"]))
    denied(lambda: terra.send_message(QueueUrl=other_queue, MessageBody="{}"))
    denied(lambda: terra.send_message(QueueUrl=outputs["DeadLetterQueueUrl"], MessageBody="{}"))
    s3 = Endpoint(moto_server, key["AccessKeyId"], key["SecretAccessKey"]).client("s3")
    denied(lambda: s3.list_objects_v2(Bucket=outputs["BucketName"]))
