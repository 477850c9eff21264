"""The promises template.yaml makes to a customer, checked on the template
itself (parsed with cfn-lint's CloudFormation YAML loader, which understands
the short-form intrinsic functions)."""

import pathlib
import re

import pytest
from cfnlint.decode import cfn_yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = cfn_yaml.load(str(ROOT / "template.yaml"))
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]

READ_ONLY_PREFIXES = ("Describe", "List", "Get")


def resource(name):
    return RESOURCES[name]["Properties"]


def policy_documents(node):
    """Every IAM policy document under `node`, whichever `Fn::If` branch holds it."""
    if isinstance(node, dict):
        if "PolicyDocument" in node:
            yield node["PolicyDocument"]
        for value in node.values():
            yield from policy_documents(value)
    elif isinstance(node, list):
        for value in node:
            yield from policy_documents(value)


def statements(resource_name):
    for document in policy_documents(resource(resource_name)):
        yield from document["Statement"]


def as_list(value):
    return value if isinstance(value, list) else [value]


def iam_principals():
    return [
        name
        for name, body in RESOURCES.items()
        if body["Type"] in ("AWS::IAM::Role", "AWS::IAM::User")
    ]


def test_sqs_mapping_reports_batch_item_failures():
    events = resource("SqsHandlerFunction")["Events"]
    (event,) = events.values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "MaximumConcurrency" in event["Properties"]["ScalingConfig"]


@pytest.mark.parametrize("timeout", PARAMETERS["FunctionTimeout"]["AllowedValues"])
def test_visibility_timeout_is_at_least_six_times_the_function_timeout(timeout):
    queue = resource("EventsQueue")
    assert queue["VisibilityTimeout"] == {
        "Fn::FindInMap": ["Timeouts", {"Ref": "FunctionTimeout"}, "VisibilityTimeout"]
    }
    globals_timeout = TEMPLATE["Globals"]["Function"]["Timeout"]
    assert globals_timeout == {"Ref": "FunctionTimeout"}
    visibility = TEMPLATE["Mappings"]["Timeouts"][timeout]["VisibilityTimeout"]
    window = PARAMETERS["SqsBatchingWindowSeconds"]["MaxValue"]
    assert visibility >= 6 * int(timeout) + window
    assert visibility <= 43200, "SQS allows at most 12 hours"


def test_every_function_timeout_has_a_visibility_timeout():
    assert set(TEMPLATE["Mappings"]["Timeouts"]) == set(
        PARAMETERS["FunctionTimeout"]["AllowedValues"]
    )


def test_queue_redrives_to_an_encrypted_dead_letter_queue_kept_14_days():
    queue = resource("EventsQueue")
    assert queue["SqsManagedSseEnabled"] is True
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]
    }
    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    assert PARAMETERS["MaxReceiveCount"]["Default"] == 5
    dlq = resource("EventsDeadLetterQueue")
    assert dlq["SqsManagedSseEnabled"] is True
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_terra_sender_may_only_send_to_its_queue():
    sender = list(statements("TerraSenderUser"))
    assert sender == [
        {
            "Effect": "Allow",
            "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"],
            "Resource": {"Fn::GetAtt": ["EventsQueue", "Arn"]},
        }
    ]
    assert not [r for r in RESOURCES.values() if r["Type"] == "AWS::IAM::AccessKey"], (
        "no access key in the template: its secret would sit in the stack"
    )


def test_no_wildcard_resource_for_anything_but_reads():
    for principal in iam_principals():
        for statement in statements(principal):
            assert statement["Effect"] == "Allow"
            actions = as_list(statement["Action"])
            for action in actions:
                service, verb = action.split(":")
                assert "*" not in verb and "*" not in service, f"{principal}: {action}"
            if "*" in as_list(statement["Resource"]):
                writes = [a for a in actions if not a.split(":")[1].startswith(READ_ONLY_PREFIXES)]
                assert not writes, f"{principal}: {writes} on Resource *"


def test_handlers_get_exactly_the_store_actions_the_code_calls():
    for role in ("SqsHandlerRole", "KafkaHandlerRole"):
        actions = {
            action
            for statement in statements(role)
            for action in as_list(statement["Action"])
            if action.split(":")[0] in ("s3", "dynamodb")
        }
        assert actions == {
            "s3:PutObject",
            "s3:GetObject",
            "s3:AbortMultipartUpload",
            "s3:ListBucket",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
        }, role


def test_sqs_handler_gets_exactly_the_queue_actions_the_mapping_and_code_call():
    """Lambda's mapping receives, deletes and reads the queue's attributes;
    the code changes visibility (a batch held for its invocation, failed
    messages returned while their URLs live) and reads the visibility timeout
    and redrive policy."""
    statements_on_queue = [
        statement
        for statement in statements("SqsHandlerRole")
        if any(action.startswith("sqs:") for action in as_list(statement["Action"]))
    ]
    actions = {action for s in statements_on_queue for action in as_list(s["Action"])}
    assert actions == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    }
    for statement in statements_on_queue:
        assert statement["Resource"] == {"Fn::GetAtt": ["EventsQueue", "Arn"]}


def test_archive_access_is_confined_to_the_prefix():
    """Writes go under the prefix, wherever granted; the archive's listing
    too (a source bucket's listing is the whole bucket, Terra's alone)."""
    for role in ("SqsHandlerRole", "KafkaHandlerRole"):
        for statement in statements(role):
            if "s3:PutObject" in as_list(statement["Action"]):
                arn, _ = statement["Resource"]["Fn::Sub"]
                assert arn.endswith("/${S3Prefix}*"), arn
        _, archive_statements = policy_named(role, "archive")
        listing = [s for s in archive_statements if "s3:ListBucket" in as_list(s["Action"])]
        assert listing, role
        for statement in listing:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == {
                "Fn::Sub": "${S3Prefix}*"
            }


def test_created_stores_are_private_encrypted_and_kept():
    bucket = RESOURCES["ArchiveBucket"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
    (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    table = RESOURCES["RecordsTable"]
    assert table["DeletionPolicy"] == "Retain"
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert [k["AttributeName"] for k in props["KeySchema"]] == ["pk", "sk"]
    (index,) = props["GlobalSecondaryIndexes"]
    assert (index["IndexName"], index["KeySchema"][0]["AttributeName"]) == ("gsi1", "gsi1pk")


def test_kafka_partial_batch_setting_matches_the_mapping():
    env = resource("KafkaHandlerFunction")["Environment"]["Variables"]
    assert env["TERRA_KAFKA_PARTIAL_BATCH"] == {"Ref": "KafkaPartialBatch"}
    assert env["TERRA_QUARANTINE_QUEUE_URL"] == {"Ref": "KafkaQuarantineQueue"}
    mapping = resource("KafkaEventSourceMapping")
    for prop in (
        "FunctionResponseTypes",
        "ProvisionedPollerConfig",
        "MaximumRetryAttempts",
        "DestinationConfig",
    ):
        condition, _, otherwise = mapping[prop]["Fn::If"]
        assert condition == "KafkaPartialBatchOn", prop
        assert otherwise == {"Ref": "AWS::NoValue"}, prop
    assert mapping["FunctionResponseTypes"]["Fn::If"][1] == ["ReportBatchItemFailures"]
    assert TEMPLATE["Conditions"]["KafkaPartialBatchOn"] == {
        "Fn::Equals": [{"Ref": "KafkaPartialBatch"}, "true"]
    }
    assert mapping["StartingPosition"] == {"Ref": "KafkaStartingPosition"}
    assert PARAMETERS["KafkaStartingPosition"]["Default"] == "LATEST"


def test_each_stack_has_its_own_kafka_consumer_group_and_may_read_it():
    mapping = resource("KafkaEventSourceMapping")
    group = {"Fn::Sub": "terra-sink-${AWS::StackName}"}
    for config in ("AmazonManagedKafkaEventSourceConfig", "SelfManagedKafkaEventSourceConfig"):
        _, when_used, _ = mapping[config]["Fn::If"]
        assert when_used["ConsumerGroupId"] == group, config
    group_arns = [
        statement["Resource"]["Fn::Sub"][0]
        for statement in statements("KafkaHandlerRole")
        if "kafka-cluster:AlterGroup" in as_list(statement["Action"])
    ]
    assert group_arns and all(arn.endswith("/terra-sink-${AWS::StackName}") for arn in group_arns)


def test_functions_log_json_to_log_groups_with_retention():
    for function, group in (
        ("SqsHandlerFunction", "SqsHandlerLogGroup"),
        ("KafkaHandlerFunction", "KafkaHandlerLogGroup"),
    ):
        logging = resource(function)["LoggingConfig"]
        assert logging["LogFormat"] == "JSON"
        assert logging["LogGroup"] == {"Ref": group}
        assert resource(group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_alarms_cover_dead_letters_message_age_errors_throttles_and_expired_urls():
    alarms = {
        (str(body["Properties"]["Namespace"]), body["Properties"]["MetricName"])
        for body in RESOURCES.values()
        if body["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        (str({"Ref": "MetricsNamespace"}), "RecordsFailedExpired"),
    } <= alarms
    assert PARAMETERS["OldestMessageAlarmSeconds"]["Default"] < 600


def test_every_environment_variable_is_one_the_function_reads():
    config = (ROOT / "src" / "config.rs").read_text()
    known = set(re.findall(r'"(TERRA_[A-Z0-9_]+)"', config))
    variables = dict(TEMPLATE["Globals"]["Function"]["Environment"]["Variables"])
    variables.update(resource("KafkaHandlerFunction")["Environment"]["Variables"])
    assert set(variables) <= known, set(variables) - known


def test_binaries_are_built_with_cargo_lambda():
    for function, binary in (
        ("SqsHandlerFunction", "sqs-handler"),
        ("KafkaHandlerFunction", "kafka-handler"),
    ):
        metadata = RESOURCES[function]["Metadata"]
        assert metadata["BuildMethod"] == "rust-cargolambda"
        assert metadata["BuildProperties"]["Binary"] == binary
    assert TEMPLATE["Globals"]["Function"]["Runtime"] == "provided.al2023"
    assert PARAMETERS["Architecture"]["Default"] == "arm64"


RULE_FUNCTIONS = {
    "Fn::And",
    "Fn::Contains",
    "Fn::EachMemberEquals",
    "Fn::EachMemberIn",
    "Fn::Equals",
    "Fn::Not",
    "Fn::Or",
    "Fn::RefAll",
    "Fn::ValueOf",
    "Fn::ValueOfAll",
    "Ref",
}


def functions_in(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("Fn::") or key == "Ref":
                yield key
            yield from functions_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from functions_in(value)


def test_rules_use_only_rule_functions():
    """CloudFormation allows only the rule functions in a rule's condition and
    assertions (no Fn::Join, Fn::Sub, ...)."""
    for name, rule in TEMPLATE["Rules"].items():
        used = set(functions_in(rule.get("RuleCondition"))) | set(functions_in(rule["Assertions"]))
        assert used <= RULE_FUNCTIONS, (name, used - RULE_FUNCTIONS)


def test_limits_lambda_enforces_are_rules():
    rules = TEMPLATE["Rules"]
    window = rules["SqsLargeBatchesHaveAWindow"]
    assert window["RuleCondition"]["Fn::Not"][0]["Fn::Contains"][0] == [str(n) for n in range(1, 11)]
    (age,) = rules["KafkaRecordAgeInRange"]["Assertions"]
    assert age["Assert"]["Fn::Not"][0]["Fn::Contains"][0] == [str(n) for n in range(60)]
    assert PARAMETERS["KafkaMaximumRecordAgeSeconds"]["MinValue"] == -1
    assert PARAMETERS["KafkaMaximumRecordAgeSeconds"]["MaxValue"] == 604800


def test_replaced_archive_versions_expire():
    (rule,) = RESOURCES["ArchiveBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] > 0


def policy_named(role, name):
    """The policy `name` of `role`, and the condition it is under."""
    for entry in resource(role)["Policies"]:
        if "Fn::If" in entry:
            condition, policy, otherwise = entry["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}
            if policy["PolicyName"] == name:
                return condition, policy["PolicyDocument"]["Statement"]
        elif entry["PolicyName"] == name:
            return None, entry["PolicyDocument"]["Statement"]
    raise AssertionError(f"{role} has no policy {name}")


def test_customer_managed_keys_get_exactly_what_their_store_needs():
    expected = {
        "archive-key": (
            "ExistingBucketHasKey",
            {"kms:GenerateDataKey", "kms:Decrypt"},
            "ExistingBucketKmsKeyArn",
        ),
        "table-key": (
            "ExistingTableHasKey",
            {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"},
            "ExistingTableKmsKeyArn",
        ),
        "source-bucket-key": (
            "SourceBucketHasKey",
            {"kms:Decrypt"},
            "TerraSourceBucketKmsKeyArn",
        ),
    }
    for role in ("SqsHandlerRole", "KafkaHandlerRole"):
        for name, (condition, actions, key) in expected.items():
            found_condition, (statement,) = policy_named(role, name)
            assert found_condition == condition, (role, name)
            assert set(as_list(statement["Action"])) == actions, (role, name)
            assert statement["Resource"] == {"Ref": key}, (role, name)
    condition, (statement,) = policy_named("KafkaHandlerRole", "kafka-credentials-key")
    assert condition == "KafkaSecretHasKey"
    assert (statement["Action"], statement["Resource"]) == (
        "kms:Decrypt",
        {"Ref": "KafkaSecretKmsKeyArn"},
    )
    (assertion,) = TEMPLATE["Rules"]["MskScramSecretKeyNamed"]["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "KafkaSecretKmsKeyArn"}, ""]}]}


def test_a_source_bucket_is_read_only_and_only_when_named():
    for role in ("SqsHandlerRole", "KafkaHandlerRole"):
        condition, (read, list_keys) = policy_named(role, "read-terra-source-bucket")
        assert condition == "HasSourceBucket"
        assert (read["Action"], read["Resource"]) == (
            "s3:GetObject",
            {"Fn::Sub": "arn:${AWS::Partition}:s3:::${TerraSourceBucket}/*"},
        )
        assert (list_keys["Action"], list_keys["Resource"]) == (
            "s3:ListBucket",
            {"Fn::Sub": "arn:${AWS::Partition}:s3:::${TerraSourceBucket}"},
        )
    assert TEMPLATE["Conditions"]["HasSourceBucket"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "TerraSourceBucket"}, ""]}]
    }
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["TERRA_SOURCE_BUCKETS"] == {"Ref": "TerraSourceBucket"}
    assert variables["TERRA_SOURCE_BUCKET_OWNER"] == {
        "Fn::If": ["HasSourceBucket", {"Ref": "AWS::AccountId"}, ""]
    }
    assert TEMPLATE["Parameters"]["TerraSourceBucket"]["Default"] == ""


def test_mappings_report_their_metrics():
    sqs_event = resource("SqsHandlerFunction")["Events"]["TerraQueue"]["Properties"]
    assert sqs_event["MetricsConfig"] == {"Metrics": ["EventCount"]}
    assert resource("KafkaEventSourceMapping")["MetricsConfig"] == {"Metrics": ["EventCount"]}


def test_alarms_watch_the_url_clock_and_kafka_lag():
    alarms = {
        body["Properties"]["MetricName"]: body["Properties"]
        for body in RESOURCES.values()
        if body["Type"] == "AWS::CloudWatch::Alarm"
    }
    age = alarms["PayloadAgeAtFetch"]
    assert age["Namespace"] == {"Ref": "MetricsNamespace"}
    assert age["Statistic"] == "Maximum"
    assert PARAMETERS["PayloadAgeAlarmSeconds"]["Default"] < 600
    assert alarms["OffsetLag"]["Dimensions"][0]["Value"] == {"Ref": "KafkaHandlerFunction"}


def test_dashboard_is_json_and_shows_the_url_clock():
    import json

    body, variables = RESOURCES["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    for name in list(variables) + ["AWS::Region"]:
        body = body.replace("${" + name + "}", "placeholder")
    assert "${" not in body
    widgets = json.loads(body)["widgets"]
    shown = {metric[1] for widget in widgets for metric in widget["properties"]["metrics"]}
    assert {"PayloadAgeAtFetch", "ApproximateAgeOfOldestMessage", "RecordsFailedExpired"} <= shown


def test_metrics_survive_the_log_level():
    """EMF lines carry no "level", so Lambda files them as INFO: a higher
    ApplicationLogLevel would drop every metric (docs/operations.md says so)."""
    for function in ("SqsHandlerFunction", "KafkaHandlerFunction"):
        assert resource(function)["LoggingConfig"]["ApplicationLogLevel"] in ("TRACE", "DEBUG", "INFO")


def test_the_mappings_discarded_batches_and_the_functions_quarantine_are_apart():
    mapping = resource("KafkaEventSourceMapping")
    _, destination, _ = mapping["DestinationConfig"]["Fn::If"]
    assert destination["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["KafkaDiscardedBatchesQueue", "Arn"]
    }
    env = resource("KafkaHandlerFunction")["Environment"]["Variables"]
    assert env["TERRA_QUARANTINE_QUEUE_URL"] == {"Ref": "KafkaQuarantineQueue"}
    condition, (statement,) = policy_named("KafkaHandlerRole", "discarded-batches")
    assert condition == "KafkaDiscardsBatches"
    assert statement["Resource"] == {"Fn::GetAtt": ["KafkaDiscardedBatchesQueue", "Arn"]}


def test_self_managed_kafka_authenticates_as_chosen_with_an_optional_root_ca():
    chosen = PARAMETERS["SelfManagedKafkaAuthentication"]
    assert set(chosen["AllowedValues"]) == {
        "BASIC_AUTH",
        "SASL_SCRAM_256_AUTH",
        "SASL_SCRAM_512_AUTH",
        "CLIENT_CERTIFICATE_TLS_AUTH",
    }
    condition, configs, _ = resource("KafkaEventSourceMapping")["SourceAccessConfigurations"]["Fn::If"]
    assert condition == "UseSelfManagedKafka"
    auth, root_ca, *_vpc = configs
    assert auth == {"Type": {"Ref": "SelfManagedKafkaAuthentication"}, "URI": {"Ref": "KafkaSecretArn"}}
    ca_condition, ca, otherwise = root_ca["Fn::If"]
    assert (ca_condition, ca["Type"], otherwise) == (
        "KafkaHasRootCa",
        "SERVER_ROOT_CA_CERTIFICATE",
        {"Ref": "AWS::NoValue"},
    )
    condition, (statement,) = policy_named("KafkaHandlerRole", "kafka-root-ca")
    assert (condition, statement["Resource"]) == ("KafkaHasRootCa", {"Ref": "KafkaRootCaSecretArn"})


SELF_MANAGED = {
    "KafkaSource": "self-managed",
    "KafkaBootstrapServers": "b-1.kafka.internal:9096",
    "KafkaSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:terra-kafka-AbCdEf",
}


def deployed_kafka(overrides):
    """The Kafka mapping's access configurations and the Kafka role's policy
    names, as CloudFormation would create them with these parameters."""
    import local_stack

    template, _ = local_stack.resolved_template(dict(SELF_MANAGED, **overrides))
    resources = template["Resources"]
    mapping = resources["KafkaEventSourceMapping"]["Properties"]
    policies = [p["PolicyName"] for p in resources["KafkaHandlerRole"]["Properties"]["Policies"]]
    return mapping["SourceAccessConfigurations"], policies


def test_self_managed_kafka_in_a_vpc_polls_from_its_subnets():
    configurations, policies = deployed_kafka(
        {
            "SelfManagedKafkaSubnet1": "subnet-0a1",
            "SelfManagedKafkaSubnet2": "subnet-0b2",
            "SelfManagedKafkaSecurityGroup": "sg-0c3",
        }
    )
    assert configurations == [
        {"Type": {"Ref": "SelfManagedKafkaAuthentication"}, "URI": {"Ref": "KafkaSecretArn"}},
        {"Type": "VPC_SUBNET", "URI": {"Fn::Sub": "subnet:${SelfManagedKafkaSubnet1}"}},
        {"Type": "VPC_SUBNET", "URI": {"Fn::Sub": "subnet:${SelfManagedKafkaSubnet2}"}},
        {
            "Type": "VPC_SECURITY_GROUP",
            "URI": {"Fn::Sub": "security_group:${SelfManagedKafkaSecurityGroup}"},
        },
    ]
    assert "kafka-vpc" in policies


def test_self_managed_kafka_on_the_internet_needs_no_vpc():
    configurations, policies = deployed_kafka({})
    assert [c["Type"] for c in configurations] == [{"Ref": "SelfManagedKafkaAuthentication"}]
    assert "kafka-vpc" not in policies


def test_self_managed_kafka_subnets_come_with_a_security_group():
    (rule,) = [
        a
        for a in TEMPLATE["Rules"]["SelfManagedKafkaReachable"]["Assertions"]
        if "SelfManagedKafkaSecurityGroup" in str(a["Assert"])
    ]
    assert "SelfManagedKafkaSubnet1" in str(rule["Assert"])
    for name in ("SelfManagedKafkaSubnet1", "SelfManagedKafkaSubnet2", "SelfManagedKafkaSubnet3"):
        assert PARAMETERS[name]["AllowedPattern"] == "^(subnet-[0-9a-f]+)?$"
    assert PARAMETERS["SelfManagedKafkaSecurityGroup"]["AllowedPattern"] == "^(sg-[0-9a-f]+)?$"


def test_the_console_form_groups_and_labels_every_parameter_once():
    interface = TEMPLATE["Metadata"]["AWS::CloudFormation::Interface"]
    grouped = [name for group in interface["ParameterGroups"] for name in group["Parameters"]]
    assert sorted(grouped) == sorted(PARAMETERS), set(grouped) ^ set(PARAMETERS)
    assert len(grouped) == len(set(grouped)), "a parameter in two groups"
    labels = interface["ParameterLabels"]
    assert set(labels) == set(PARAMETERS)
    assert all(label["default"].strip() for label in labels.values())
