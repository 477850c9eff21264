"""template.yaml and kafka/template.yaml deployed into moto's CloudFormation (in process): the SAM
transform offline, then create-stack, then what the stack holds read back
through the services' own APIs. This proves the template creates what the
functions are configured against; IAM is not enforced here.

moto 5.2 does not create CloudWatch alarms, dashboards or bucket policies
from a stack (it warns and skips them), nor Kafka event source mappings
(it wants an SQS, Kinesis or DynamoDB stream ARN): those are checked on the
template alone, in test_template.py."""

import json
import os
import warnings

import boto3
import pytest
from moto import mock_aws

import local_stack

KAFKA = {
    "KafkaBrokers": "b-1.kafka.example:9096",
    "KafkaSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:terra-kafka-AbCdEf",
    "Settings": "KafkaPartialBatch=true",
}


@pytest.fixture
def session(monkeypatch):
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    with mock_aws(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield boto3.Session()


def functions(session):
    lam = session.client("lambda")
    return {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}


def test_the_default_stack_creates_what_the_function_is_configured_against(session):
    outputs = local_stack.deploy(session)
    template, _ = local_stack.resolved_template()
    setting = template["Mappings"]["Defaults"]["Settings"]

    (function,) = functions(session).values()
    assert function["FunctionName"] == outputs["SqsHandlerFunctionName"]
    assert int(function["Timeout"]) == int(setting["FunctionTimeout"])
    assert int(function["MemorySize"]) == int(setting["FunctionMemory"])
    env = function["Environment"]["Variables"]
    assert env["TERRA_S3_BUCKET"] == outputs["BucketName"]
    assert env["TERRA_DYNAMODB_TABLE"] == outputs["TableName"]
    assert env["TERRA_S3_PREFIX"] == setting["S3Prefix"]
    assert str(env["TERRA_FETCH_CONCURRENCY"]) == setting["FetchConcurrency"]
    assert str(env["TERRA_DYNAMODB_MAX_ITEMS"]) == setting["DynamoDbMaxItems"]
    # Empty: the function derives its budget from its memory.
    assert env.get("TERRA_MEMORY_BUDGET_MB", "") == setting["MemoryBudgetMb"] == ""
    session.client("s3").head_bucket(Bucket=env["TERRA_S3_BUCKET"])
    table = session.client("dynamodb").describe_table(TableName=env["TERRA_DYNAMODB_TABLE"])
    assert [k["AttributeName"] for k in table["Table"]["KeySchema"]] == ["pk", "sk"]

    queue = session.client("sqs").get_queue_attributes(
        QueueUrl=outputs["QueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    timeouts = template["Mappings"]["Timeouts"]
    expected_visibility = timeouts[setting["FunctionTimeout"]]["VisibilityTimeout"]
    assert int(queue["VisibilityTimeout"]) == expected_visibility
    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == int(setting["MaxReceiveCount"])
    dead_letters = session.client("sqs").get_queue_attributes(
        QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]
    assert redrive["deadLetterTargetArn"] == dead_letters["QueueArn"]

    (mapping,) = session.client("lambda").list_event_source_mappings()["EventSourceMappings"]
    assert mapping["EventSourceArn"] == outputs["QueueArn"]
    assert mapping["BatchSize"] == int(setting["SqsBatchSize"])
    assert mapping["MaximumBatchingWindowInSeconds"] == int(setting["SqsBatchingWindowSeconds"])
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == int(setting["SqsMaximumConcurrency"])

    # Terra is let in by the queue policy: no IAM user, no key.
    assert "TerraSenderUserName" not in outputs
    assert session.client("iam").list_users()["Users"] == []


def test_terra_with_an_access_key_gets_a_user_and_no_queue_policy(session):
    outputs = local_stack.deploy(session, overrides={"TerraAccess": "access-key"})
    session.client("iam").get_user(UserName=outputs["TerraSenderUserName"])
    template, _ = local_stack.resolved_template({"TerraAccess": "access-key"})
    assert "EventsQueuePolicy" not in template["Resources"]


def test_settings_given_change_what_the_stack_creates(session):
    outputs = local_stack.deploy(
        session, overrides={"Settings": "FunctionTimeout=300 MaxReceiveCount=7 S3Prefix=health/"}
    )
    (function,) = functions(session).values()
    assert int(function["Timeout"]) == 300
    assert function["Environment"]["Variables"]["TERRA_S3_PREFIX"] == "health/"
    queue = session.client("sqs").get_queue_attributes(
        QueueUrl=outputs["QueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    assert int(queue["VisibilityTimeout"]) == 2100
    assert json.loads(queue["RedrivePolicy"])["maxReceiveCount"] == 7


def test_a_kafka_stack_wires_the_kafka_handler_to_its_queues(session):
    outputs = local_stack.deploy(
        session,
        overrides=KAFKA,
        without=("KafkaEventSourceMapping",),
        path=local_stack.KAFKA_TEMPLATE,
    )
    # The Kafka stack is the Kafka function and its stores: no SQS function,
    # no Terra queue, no sender user.
    assert set(functions(session)) == {outputs["KafkaHandlerFunctionName"]}
    assert "QueueUrl" not in outputs
    assert session.client("iam").list_users()["Users"] == []
    kafka = functions(session)[outputs["KafkaHandlerFunctionName"]]
    env = kafka["Environment"]["Variables"]
    assert env["TERRA_QUARANTINE_QUEUE_URL"] == outputs["KafkaQuarantineQueueUrl"]
    assert env["TERRA_KAFKA_PARTIAL_BATCH"] == "true"
    assert outputs["KafkaDiscardedBatchesQueueUrl"] != outputs["KafkaQuarantineQueueUrl"]
    sqs = session.client("sqs")
    for url in (outputs["KafkaQuarantineQueueUrl"], outputs["KafkaDiscardedBatchesQueueUrl"]):
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])


def test_a_stack_without_an_archive_configures_no_bucket(session):
    outputs = local_stack.deploy(session, overrides={"Archive": "none"})
    (function,) = functions(session).values()
    env = function["Environment"]["Variables"]
    assert env.get("TERRA_S3_BUCKET", "") == ""
    assert env["TERRA_DYNAMODB_TABLE"] == outputs["TableName"]
    assert "BucketName" not in outputs


def test_table_retention_and_the_boundary_reach_the_function_and_its_role(session):
    """What moto's CloudFormation applies of these settings: the function's
    retention variable and the role's permissions boundary. It ignores a
    table's time to live, a bucket's lifecycle rules and logging, and a
    user's boundary: test_template.py checks those on the template."""
    iam = session.client("iam")
    boundary = iam.create_policy(
        PolicyName="terra-boundary",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )["Policy"]["Arn"]
    settings = f"TableRetentionDays=30 ArchiveRetentionDays=365 PermissionsBoundaryArn={boundary}"
    local_stack.deploy(session, overrides={"Settings": settings})
    (function,) = functions(session).values()
    assert str(function["Environment"]["Variables"]["TERRA_DYNAMODB_RETENTION_DAYS"]) == "30"
    role_name = function["Role"].rsplit("/", 1)[1]
    assert iam.get_role(RoleName=role_name)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == boundary


def test_kmskey_create_makes_a_rotating_key_and_keys_what_moto_can_show(session):
    """The key exists with rotation on, and the queues, the archive bucket
    and the alarm topic use it, read back from the services. moto's
    CloudFormation ignores a table's and a log group's key: the template
    tests check those, and only AWS can show them used."""
    outputs = local_stack.deploy(session, overrides={"KmsKey": "create", "AlarmEmail": "ops@example.com"})
    kms = session.client("kms")
    (key,) = kms.list_keys()["Keys"]
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    sqs = session.client("sqs")
    for url in (outputs["QueueUrl"], outputs["DeadLetterQueueUrl"]):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["KmsMasterKeyId"])["Attributes"]
        assert attributes["KmsMasterKeyId"] == key["KeyArn"], url
    (rule,) = session.client("s3").get_bucket_encryption(Bucket=outputs["BucketName"])[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key["KeyArn"]}
    sns = session.client("sns")
    (topic,) = sns.list_topics()["Topics"]
    assert sns.get_topic_attributes(TopicArn=topic["TopicArn"])["Attributes"]["KmsMasterKeyId"] == key["KeyArn"]


def test_in_your_vpc_the_function_gets_its_subnets_and_the_gateway_endpoints(session):
    ec2 = session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)
    ]
    group = ec2.create_security_group(GroupName="terra-sink", Description="terra-sink", VpcId=vpc)["GroupId"]
    routes = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    settings = (
        f"FunctionSubnetIds={','.join(subnets)} FunctionSecurityGroupId={group} "
        f"FunctionVpcId={vpc} GatewayEndpointRouteTableIds={routes}"
    )
    local_stack.deploy(session, overrides={"Settings": settings})
    (function,) = functions(session).values()
    assert function["VpcConfig"]["SubnetIds"] == subnets
    assert function["VpcConfig"]["SecurityGroupIds"] == [group]
    endpoints = {
        e["ServiceName"]: (e["VpcEndpointType"], e["VpcId"], e["RouteTableIds"])
        for e in ec2.describe_vpc_endpoints()["VpcEndpoints"]
    }
    assert endpoints == {
        "com.amazonaws.us-east-1.s3": ("Gateway", vpc, [routes]),
        "com.amazonaws.us-east-1.dynamodb": ("Gateway", vpc, [routes]),
    }

