"""Least privilege, proven by running: the stack from template.yaml in a moto
server, then IAM enforcement switched on (`/moto-api/reset-auth`), and the
identities the template creates calling what they may and may not.

moto 5.2's CloudFormation drops an IAM user's inline `Policies` (and keeps a
role's in a form its evaluator cannot read), so the template's own documents
are put back through the IAM API, their references resolved from the stack's
resources. moto checks `sqs:GetQueueUrl` against resource `*` (AWS checks the
queue), so that one allowed call is not exercised here."""

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


def denied(call):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call()
    response = raised.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403, response


PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"}


class StackReferences:
    """Resolves Ref, Fn::GetAtt and Fn::Sub in the template's policy
    documents to the stack's physical resources, as CloudFormation would."""

    def __init__(self, admin, stack_name, parameters):
        cloudformation = admin.client("cloudformation")
        summaries = cloudformation.list_stack_resources(StackName=stack_name)[
            "StackResourceSummaries"
        ]
        self.physical = {s["LogicalResourceId"]: s["PhysicalResourceId"] for s in summaries}
        self.types = {s["LogicalResourceId"]: s["ResourceType"] for s in summaries}
        self.values = dict(PSEUDO, **parameters, **{"AWS::StackName": stack_name})
        self.sqs = admin.client("sqs")

    def ref(self, name):
        return self.physical.get(name, self.values.get(name))

    def arn(self, name):
        kind, physical = self.types[name], self.physical[name]
        if kind == "AWS::SQS::Queue":
            return self.sqs.get_queue_attributes(QueueUrl=physical, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
        if kind == "AWS::Logs::LogGroup":
            return f"arn:aws:logs:us-east-1:123456789012:log-group:{physical}:*"
        raise ValueError(f"no ARN for {kind}")

    def sub(self, text, variables):
        import re

        def one(match):
            name = match.group(1)
            if name in variables:
                return self.resolve(variables[name])
            if name.endswith(".Arn"):
                return self.arn(name[: -len(".Arn")])
            return self.ref(name)

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, node):
        if isinstance(node, dict):
            if set(node) == {"Ref"}:
                return self.ref(node["Ref"])
            if set(node) == {"Fn::GetAtt"}:
                return self.arn(node["Fn::GetAtt"][0])
            if set(node) == {"Fn::Sub"}:
                value = node["Fn::Sub"]
                text, variables = (value, {}) if isinstance(value, str) else value
                return self.sub(text, variables)
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v) for v in node]
        return node


def enforce_iam(url):
    request = urllib.request.Request(
        url + "/moto-api/reset-auth",
        data=b"0",
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5)


class Stack:
    """The default stack in the moto server, read back for the checks."""

    def __init__(self, url):
        self.admin = Endpoint(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.outputs = local_stack.deploy(self.admin)
        self.template, self.parameters = local_stack.resolved_template()
        self.references = StackReferences(self.admin, "terra-sink", self.parameters)

    def policies(self, logical_id):
        """The identity's inline policies as the template writes them, their
        references resolved: (name, document as JSON)."""
        for policy in self.template["Resources"][logical_id]["Properties"]["Policies"]:
            document = self.references.resolve(policy["PolicyDocument"])
            yield policy["PolicyName"], json.dumps(document)


def test_terra_can_send_to_its_queue_and_nothing_else(moto_server):
    stack = Stack(moto_server)
    admin, outputs = stack.admin, stack.outputs
    user = outputs["TerraSenderUserName"]
    iam = admin.client("iam")
    for name, document in stack.policies("TerraSenderUser"):
        iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=document)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    other_queue = admin.client("sqs").create_queue(QueueName="not-terras")["QueueUrl"]
    admin.client("sqs").send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}")

    enforce_iam(moto_server)

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


def test_the_sqs_handler_role_may_do_what_the_code_calls_and_no_more(moto_server):
    stack = Stack(moto_server)
    admin, outputs, parameters = stack.admin, stack.outputs, stack.parameters
    role_name = stack.references.ref("SqsHandlerRole")
    iam = admin.client("iam")
    # moto keeps a stack role's inline policies in a form its own evaluator
    # cannot read: the template's documents are put back.
    for name, document in stack.policies("SqsHandlerRole"):
        iam.put_role_policy(RoleName=role_name, PolicyName=name, PolicyDocument=document)
    role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
    credentials = admin.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="handler")[
        "Credentials"
    ]
    admin.client("sqs").send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}")
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
    # The mapping's calls and the function's own (see the README's retry
    # schedule).
    (message,) = sqs.receive_message(QueueUrl=outputs["QueueUrl"])["Messages"]
    sqs.get_queue_attributes(
        QueueUrl=outputs["QueueUrl"], AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
    )
    # The function calls ChangeMessageVisibilityBatch, which AWS authorizes
    # as sqs:ChangeMessageVisibility; moto asks for an action of the batch's
    # own name, so the single call stands in for it here.
    sqs.change_message_visibility(
        QueueUrl=outputs["QueueUrl"], ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=30
    )
    sqs.delete_message(QueueUrl=outputs["QueueUrl"], ReceiptHandle=message["ReceiptHandle"])
    denied(lambda: sqs.send_message(QueueUrl=outputs["QueueUrl"], MessageBody="{}"))
    denied(lambda: sqs.receive_message(QueueUrl=outputs["DeadLetterQueueUrl"]))

    s3 = as_role("s3")
    bucket, prefix = outputs["BucketName"], parameters["S3Prefix"]
    s3.put_object(Bucket=bucket, Key=f"{prefix}archived.json", Body=b"{}")
    s3.head_object(Bucket=bucket, Key=f"{prefix}archived.json")
    s3.get_object(Bucket=bucket, Key=f"{prefix}archived.json")
    denied(lambda: s3.put_object(Bucket=bucket, Key="outside/archived.json", Body=b"{}"))
    denied(lambda: s3.delete_object(Bucket=bucket, Key=f"{prefix}archived.json"))
