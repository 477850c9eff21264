"""The promises the templates make to a customer, checked on the templates
themselves (parsed with cfn-lint's CloudFormation YAML loader, which
understands the short-form intrinsic functions): template.yaml, the SQS
stack, and kafka/template.yaml, the Kafka stack built from the same code."""

import pathlib
import re

import local_stack
import pytest
from cfnlint.decode import cfn_yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SQS = cfn_yaml.load(str(ROOT / "template.yaml"))
KAFKA = cfn_yaml.load(str(ROOT / "kafka" / "template.yaml"))
TEMPLATES = {"template.yaml": SQS, "kafka/template.yaml": KAFKA}
TEMPLATE = SQS
# The stores and the alarm topic are in both, identical (a test below).
RESOURCES = {**KAFKA["Resources"], **SQS["Resources"]}
SQS_DEFAULTS = SQS["Mappings"]["Defaults"]["Settings"]
KAFKA_DEFAULTS = KAFKA["Mappings"]["Defaults"]["Settings"]

READ_ONLY_PREFIXES = ("Describe", "List", "Get")
# Writes IAM cannot scope: the service defines no resource for them.
RESOURCELESS_WRITES = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


# How a template reads a setting: the one idiom, defined where the local
# deploy evaluates it.
setting = local_stack.setting_read


def resource(name):
    return RESOURCES[name]["Properties"]


def nodes(node):
    """`node` and every mapping and list below it, whichever `Fn::If`
    branch holds them."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from nodes(child)


def policy_documents(node):
    """Every IAM policy document under `node`."""
    for found in nodes(node):
        if isinstance(found, dict) and "PolicyDocument" in found:
            yield found["PolicyDocument"]


def statements(resource_name):
    for document in policy_documents(resource(resource_name)):
        yield from document["Statement"]


def as_list(value):
    return value if isinstance(value, list) else [value]


def actions_of(statement, erase_on_deauth=True):
    """The statement's actions, each `!If [EraseOnDeauthOn, action, NoValue]`
    taken as the setting says."""
    taken = []
    for action in as_list(statement["Action"]):
        if isinstance(action, dict):
            condition, action, otherwise = action["Fn::If"]
            assert (condition, otherwise) == ("EraseOnDeauthOn", {"Ref": "AWS::NoValue"}), action
            if not erase_on_deauth:
                continue
        taken.append(action)
    return taken


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


FUNCTION_TIMEOUTS = re.search(r"FunctionTimeout=\(([0-9|]+)\)", SQS["Parameters"]["Settings"]["AllowedPattern"]).group(1).split("|")


@pytest.mark.parametrize("timeout", FUNCTION_TIMEOUTS)
def test_visibility_timeout_is_at_least_six_times_the_function_timeout(timeout):
    assert TEMPLATE["Globals"]["Function"]["Timeout"] == setting("FunctionTimeout")
    visibility = TEMPLATE["Mappings"]["Timeouts"][timeout]["VisibilityTimeout"]
    # The batching window's largest value (3 digits in Settings, Lambda's 300).
    window = 300
    assert visibility >= 6 * int(timeout) + window
    assert visibility <= 43200, "SQS allows at most 12 hours"


def visibility_chosen(node, conditions):
    """The visibility timeout the queue's nested Fn::If picks when exactly
    `conditions` hold."""
    while isinstance(node, dict) and "Fn::If" in node:
        condition, when_true, when_false = node["Fn::If"]
        node = when_true if condition in conditions else when_false
    return node["Fn::FindInMap"][1]


@pytest.mark.parametrize("timeout", FUNCTION_TIMEOUTS)
def test_every_function_timeout_picks_its_own_visibility_timeout(timeout):
    """FindInMap takes no computed key: each TimeoutN condition compares the
    setting with N, and the queue's Fn::If chain picks Timeouts[N]."""
    assert set(TEMPLATE["Mappings"]["Timeouts"]) == set(FUNCTION_TIMEOUTS)
    holding = {
        name
        for name, body in TEMPLATE["Conditions"].items()
        if body == {"Fn::Equals": [setting("FunctionTimeout"), timeout]}
    }
    assert visibility_chosen(resource("EventsQueue")["VisibilityTimeout"], holding) == timeout


def test_queue_redrives_to_an_encrypted_dead_letter_queue_kept_14_days():
    queue = resource("EventsQueue")
    assert queue["SqsManagedSseEnabled"] == {"Fn::If": ["UseKey", {"Ref": "AWS::NoValue"}, True]}
    redrive = queue["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["EventsDeadLetterQueue", "Arn"]
    }
    assert redrive["maxReceiveCount"] == setting("MaxReceiveCount")
    assert SQS_DEFAULTS["MaxReceiveCount"] == "5"
    dlq = resource("EventsDeadLetterQueue")
    assert dlq["SqsManagedSseEnabled"] == queue["SqsManagedSseEnabled"]
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600


# The principal Terra's documentation names for role-based access to AWS
# destinations (NOTES in docs/deploy.md's "Giving Terra access").
TERRAS_DOCUMENTED_PRINCIPAL = "arn:aws:iam::760292141147:role/EC2_Instance_Perms"


def test_terra_is_let_in_by_a_queue_policy_granting_sending_alone():
    assert SQS["Parameters"]["TerraAccess"]["Default"] == TERRAS_DOCUMENTED_PRINCIPAL
    policy = RESOURCES["EventsQueuePolicy"]
    assert policy["Condition"] == "TerraUsesItsRole"
    assert policy["Properties"]["Queues"] == [{"Ref": "EventsQueue"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement == {
        "Sid": "TerraSends",
        "Effect": "Allow",
        "Principal": {"AWS": {"Ref": "TerraAccess"}},
        "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"],
        "Resource": {"Fn::GetAtt": ["EventsQueue", "Arn"]},
    }
    assert SQS["Conditions"]["TerraUsesAnAccessKey"] == {"Fn::Equals": [{"Ref": "TerraAccess"}, "access-key"]}
    assert SQS["Conditions"]["TerraUsesItsRole"] == {"Fn::Not": [{"Condition": "TerraUsesAnAccessKey"}]}


def test_terras_user_exists_only_when_asked_for_and_may_only_send():
    assert RESOURCES["TerraSenderUser"]["Condition"] == "TerraUsesAnAccessKey"
    assert SQS["Outputs"]["TerraSenderUserName"]["Condition"] == "TerraUsesAnAccessKey"
    _, sender = policy_named("TerraSenderUser", "send-to-terra-queue")
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
            actions = actions_of(statement)
            for action in actions:
                service, verb = action.split(":")
                assert "*" not in verb and "*" not in service, f"{principal}: {action}"
            if "*" in as_list(statement["Resource"]):
                writes = [
                    a
                    for a in actions
                    if not a.split(":")[1].startswith(READ_ONLY_PREFIXES) and a not in RESOURCELESS_WRITES
                ]
                assert not writes, f"{principal}: {writes} on Resource *"


@pytest.mark.parametrize("erase_on_deauth", [False, True])
def test_handlers_get_exactly_the_store_actions_the_code_calls(erase_on_deauth):
    """Erasure's listing and deleting only with EraseOnDeauth (their use is
    proven with IAM enforced in ops/tests/erase.rs)."""
    erasing = {"s3:ListBucketVersions", "s3:DeleteObjectVersion", "dynamodb:Query", "dynamodb:DeleteItem"}
    for role in ("SqsHandlerRole", "KafkaHandlerRole"):
        actions = {
            action
            for statement in statements(role)
            for action in actions_of(statement, erase_on_deauth)
            if action.split(":")[0] in ("s3", "dynamodb")
        }
        assert actions == {
            "s3:PutObject",
            "s3:GetObject",
            "s3:AbortMultipartUpload",
            "s3:ListBucket",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
        } | (erasing if erase_on_deauth else set()), role


def test_sqs_handler_gets_exactly_the_queue_actions_the_mapping_and_code_call():
    """Lambda's mapping receives, deletes and reads the queue's attributes;
    the code changes visibility (a batch held for its invocation, failed
    messages returned while their URLs live) and reads the visibility timeout
    and redrive policy."""
    statements_on_queue = [
        statement
        for statement in statements("SqsHandlerRole")
        if any(action.startswith("sqs:") for action in actions_of(statement))
    ]
    actions = {action for s in statements_on_queue for action in actions_of(s)}
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
            if "s3:PutObject" in actions_of(statement):
                arn, variables = statement["Resource"]["Fn::Sub"]
                assert arn.endswith("/${S3Prefix}*"), arn
                assert variables["S3Prefix"] == setting("S3Prefix")
        _, archive_statements = policy_named(role, "archive")
        listing = [s for s in archive_statements if "s3:ListBucket" in actions_of(s)]
        assert listing, role
        for statement in listing:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == {
                "Fn::Join": ["", [setting("S3Prefix"), "*"]]
            }


def test_created_stores_are_private_encrypted_and_kept():
    bucket = RESOURCES["ArchiveBucket"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
    (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == {"Fn::If": ["UseKey", "aws:kms", "AES256"]}
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
    assert env["TERRA_KAFKA_PARTIAL_BATCH"] == setting("KafkaPartialBatch")
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
    assert KAFKA["Conditions"]["KafkaPartialBatchOn"] == {
        "Fn::Equals": [setting("KafkaPartialBatch"), "true"]
    }
    assert mapping["StartingPosition"] == setting("KafkaStartingPosition")
    assert KAFKA_DEFAULTS["KafkaStartingPosition"] == "LATEST"


def test_each_stack_has_its_own_kafka_consumer_group_and_may_read_it():
    mapping = resource("KafkaEventSourceMapping")
    group = {"Fn::Sub": "terra-sink-${AWS::StackName}"}
    for config in ("AmazonManagedKafkaEventSourceConfig", "SelfManagedKafkaEventSourceConfig"):
        _, when_used, _ = mapping[config]["Fn::If"]
        assert when_used["ConsumerGroupId"] == group, config
    group_arns = [
        statement["Resource"]["Fn::Sub"][0]
        for statement in statements("KafkaHandlerRole")
        if "kafka-cluster:AlterGroup" in actions_of(statement)
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
        assert resource(group)["RetentionInDays"] == setting("LogRetentionDays")


def test_alarms_cover_dead_letters_message_age_errors_throttles_and_expired_urls():
    alarms = {
        (str(body["Properties"]["Namespace"]), body["Properties"]["MetricName"])
        for body in RESOURCES.values()
        if body["Type"] == "AWS::CloudWatch::Alarm" and "MetricName" in body["Properties"]
    }
    assert {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        (str(setting("MetricsNamespace")), "RecordsFailedExpired"),
    } <= alarms
    assert int(SQS_DEFAULTS["OldestMessageAlarmSeconds"]) < 600


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
    for template in TEMPLATES.values():
        assert template["Globals"]["Function"]["Runtime"] == "provided.al2023"
        assert template["Mappings"]["Defaults"]["Settings"]["Architecture"] == "arm64"
    assert KAFKA["Globals"]["Function"]["CodeUri"] == "..", "built from the same crate"


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
    for template in TEMPLATES.values():
        for name, rule in template["Rules"].items():
            used = set(functions_in(rule.get("RuleCondition"))) | set(functions_in(rule["Assertions"]))
            assert used <= RULE_FUNCTIONS, (name, used - RULE_FUNCTIONS)


def test_replaced_archive_versions_expire():
    rule = RESOURCES["ArchiveBucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0]
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
            assert set(actions_of(statement)) == actions, (role, name)
            assert statement["Resource"] == setting(key), (role, name)
    condition, (statement,) = policy_named("KafkaHandlerRole", "kafka-credentials-key")
    assert condition == "KafkaSecretHasKey"
    assert (statement["Action"], statement["Resource"]) == (
        "kms:Decrypt",
        setting("KafkaSecretKmsKeyArn"),
    )


def test_a_source_bucket_is_read_only_and_only_when_named():
    bucket = setting("TerraSourceBucket")
    for role, template in (("SqsHandlerRole", SQS), ("KafkaHandlerRole", KAFKA)):
        condition, (read, list_keys) = policy_named(role, "read-terra-source-bucket")
        assert condition == "HasSourceBucket"
        assert (read["Action"], read["Resource"]) == (
            "s3:GetObject",
            {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/*", {"Bucket": bucket}]},
        )
        assert (list_keys["Action"], list_keys["Resource"]) == (
            "s3:ListBucket",
            {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}", {"Bucket": bucket}]},
        )
        assert template["Conditions"]["HasSourceBucket"] == {"Fn::Not": [{"Fn::Equals": [bucket, ""]}]}
        variables = template["Globals"]["Function"]["Environment"]["Variables"]
        assert variables["TERRA_SOURCE_BUCKETS"] == bucket
        assert variables["TERRA_SOURCE_BUCKET_OWNER"] == {
            "Fn::If": ["HasSourceBucket", {"Ref": "AWS::AccountId"}, ""]
        }
        assert template["Mappings"]["Defaults"]["Settings"]["TerraSourceBucket"] == ""


@pytest.mark.parametrize(
    "name, function",
    [("template.yaml", "SqsHandlerFunction"), ("kafka/template.yaml", "KafkaHandlerFunction")],
)
def test_every_path_has_the_same_watch(name, function):
    """Expired URLs, payload age, and invocations nearing their timeout
    alarm on both functions, and both stacks have the URL-clock dashboard."""
    template = TEMPLATES[name]
    alarms = [b["Properties"] for b in template["Resources"].values() if b["Type"] == "AWS::CloudWatch::Alarm"]
    on_function = {
        a["MetricName"]: a
        for a in alarms
        if "MetricName" in a and a["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function}}]
    }
    assert on_function["RecordsFailedExpired"]["Namespace"] == setting("MetricsNamespace")
    age = on_function["PayloadAgeAtFetch"]
    assert age["Threshold"] == {"Fn::Join": ["", [setting("PayloadAgeAlarmSeconds"), "000"]]}
    assert int(template["Mappings"]["Defaults"]["Settings"]["PayloadAgeAlarmSeconds"]) < 600

    (timeout,) = [a for a in alarms if "Metrics" in a]
    duration, share = timeout["Metrics"]
    stat = duration["MetricStat"]
    assert (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"], stat["Stat"]) == ("AWS/Lambda", "Duration", "p99")
    assert stat["Metric"]["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function}}]
    # p99 over the timeout in ms (the setting is seconds), above 80 %.
    assert share["Expression"] == {"Fn::Join": ["", ["duration / ", setting("FunctionTimeout"), "000"]]}
    assert (timeout["Threshold"], timeout["ComparisonOperator"]) == (0.8, "GreaterThanThreshold")

    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert "PayloadAgeAtFetch" in body[0] and body[1]["Function"] == {"Ref": function}


@pytest.mark.parametrize("name", TEMPLATES)
def test_without_an_alarm_email_an_output_says_no_one_is_told(name):
    template = TEMPLATES[name]
    assert template["Conditions"]["NoAlarmEmail"] == {"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}
    output = template["Outputs"]["AlarmsNotifyNoOne"]
    assert output["Condition"] == "NoAlarmEmail"
    assert "tell no one" in output["Description"]


def test_mappings_report_their_metrics():
    sqs_event = resource("SqsHandlerFunction")["Events"]["TerraQueue"]["Properties"]
    assert sqs_event["MetricsConfig"] == {"Metrics": ["EventCount"]}
    assert resource("KafkaEventSourceMapping")["MetricsConfig"] == {"Metrics": ["EventCount"]}


def test_alarms_watch_the_url_clock_and_kafka_lag():
    alarms = {
        body["Properties"]["MetricName"]: body["Properties"]
        for body in RESOURCES.values()
        if body["Type"] == "AWS::CloudWatch::Alarm" and "MetricName" in body["Properties"]
    }
    age = alarms["PayloadAgeAtFetch"]
    assert age["Namespace"] == setting("MetricsNamespace")
    assert age["Statistic"] == "Maximum"
    assert int(SQS_DEFAULTS["PayloadAgeAlarmSeconds"]) < 600
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
    assert condition == "KafkaPartialBatchOn"
    assert statement["Resource"] == {"Fn::GetAtt": ["KafkaDiscardedBatchesQueue", "Arn"]}


def test_self_managed_kafka_authenticates_as_chosen_with_an_optional_root_ca():
    chosen = re.search(
        r"SelfManagedKafkaAuthentication=\(([A-Z0-9_|]+)\)", KAFKA["Parameters"]["Settings"]["AllowedPattern"]
    ).group(1)
    assert set(chosen.split("|")) == {
        "BASIC_AUTH",
        "SASL_SCRAM_256_AUTH",
        "SASL_SCRAM_512_AUTH",
        "CLIENT_CERTIFICATE_TLS_AUTH",
    }
    condition, configs, _ = resource("KafkaEventSourceMapping")["SourceAccessConfigurations"]["Fn::If"]
    assert condition == "UseSelfManagedKafka"
    auth, root_ca, *_vpc = configs
    assert auth == {"Type": setting("SelfManagedKafkaAuthentication"), "URI": {"Ref": "KafkaSecretArn"}}
    ca_condition, ca, otherwise = root_ca["Fn::If"]
    assert (ca_condition, ca["Type"], otherwise) == (
        "KafkaHasRootCa",
        "SERVER_ROOT_CA_CERTIFICATE",
        {"Ref": "AWS::NoValue"},
    )
    condition, (statement,) = policy_named("KafkaHandlerRole", "kafka-root-ca")
    assert (condition, statement["Resource"]) == ("KafkaHasRootCa", setting("KafkaRootCaSecretArn"))


SELF_MANAGED = {
    "KafkaBrokers": "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
    "KafkaSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:terra-kafka-AbCdEf",
}


def deployed_kafka(overrides):
    """The Kafka mapping's access configurations and the Kafka role's policy
    names, as CloudFormation would create them with these parameters."""
    import local_stack

    template, _ = local_stack.resolved_template(
        dict(SELF_MANAGED, **overrides), path=local_stack.KAFKA_TEMPLATE
    )
    resources = template["Resources"]
    mapping = resources["KafkaEventSourceMapping"]["Properties"]
    policies = [p["PolicyName"] for p in resources["KafkaHandlerRole"]["Properties"]["Policies"]]
    return mapping["SourceAccessConfigurations"], policies


def test_self_managed_kafka_in_a_vpc_polls_from_its_subnets():
    import local_stack

    overrides = {"Settings": "SelfManagedKafkaSubnets=subnet-0a1,subnet-0b2 SelfManagedKafkaSecurityGroup=sg-0c3"}
    configurations, policies = deployed_kafka(overrides)
    _, parameters = local_stack.resolved_template(dict(SELF_MANAGED, **overrides), path=local_stack.KAFKA_TEMPLATE)
    resolved = [
        {name: local_stack.value(v, parameters, KAFKA["Mappings"]) for name, v in c.items()}
        for c in configurations
    ]
    assert resolved == [
        {"Type": "BASIC_AUTH", "URI": SELF_MANAGED["KafkaSecretArn"]},
        {"Type": "VPC_SUBNET", "URI": "subnet:subnet-0a1"},
        {"Type": "VPC_SUBNET", "URI": "subnet:subnet-0b2"},
        {"Type": "VPC_SECURITY_GROUP", "URI": "security_group:sg-0c3"},
    ]
    assert "kafka-vpc" in policies


def test_self_managed_kafka_on_the_internet_needs_no_vpc():
    configurations, policies = deployed_kafka({})
    assert [c["Type"] for c in configurations] == ["BASIC_AUTH"]
    assert "kafka-vpc" not in policies


def test_an_msk_cluster_arn_means_msk_with_iam_unless_a_secret_is_given():
    import local_stack

    cluster = "arn:aws:kafka:us-east-1:123456789012:cluster/terra/abc-1"
    for secret, policy in (("", "msk-iam-read"), (SELF_MANAGED["KafkaSecretArn"], "kafka-credentials")):
        template, _ = local_stack.resolved_template(
            {"KafkaBrokers": cluster, "KafkaSecretArn": secret}, path=local_stack.KAFKA_TEMPLATE
        )
        mapping = template["Resources"]["KafkaEventSourceMapping"]["Properties"]
        assert mapping["EventSourceArn"] == {"Ref": "KafkaBrokers"}
        assert "SelfManagedEventSource" not in mapping
        policies = [p["PolicyName"] for p in template["Resources"]["KafkaHandlerRole"]["Properties"]["Policies"]]
        assert policy in policies and "msk-poller" in policies, policies


def test_the_console_form_groups_and_labels_every_parameter_once():
    for name, template in TEMPLATES.items():
        parameters = template["Parameters"]
        interface = template["Metadata"]["AWS::CloudFormation::Interface"]
        grouped = [p for group in interface["ParameterGroups"] for p in group["Parameters"]]
        assert sorted(grouped) == sorted(parameters), (name, set(grouped) ^ set(parameters))
        assert len(grouped) == len(set(grouped)), f"{name}: a parameter in two groups"
        labels = interface["ParameterLabels"]
        assert set(labels) == set(parameters), name
        assert all(label["default"].strip() for label in labels.values())


def setting_reads(node):
    """Every Fn::Join that merges Settings with a default, anywhere in `node`."""
    for found in nodes(node):
        if isinstance(found, dict):
            joined = found.get("Fn::Join", [None, None])[1]
            if isinstance(joined, list) and {"Ref": "Settings"} in joined:
                yield found


def idioms(node):
    """Every read of a setting in `node`: the key, and whether it is the
    whole idiom (a hand-edited variant would read the wrong value)."""
    if isinstance(node, dict):
        for key in re.findall(r"\{'Fn::FindInMap': \['Defaults', 'Settings', '(\w+)'\]\}", str(node))[:1]:
            if node == setting(key):
                yield key, True
                return
        for value in node.values():
            yield from idioms(value)
    elif isinstance(node, list):
        for value in node:
            yield from idioms(value)


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_setting_is_read_with_the_one_idiom_and_every_default_is_read(name):
    template = TEMPLATES[name]
    defaults = template["Mappings"]["Defaults"]["Settings"]
    body = {k: template[k] for k in ("Conditions", "Globals", "Resources", "Outputs")}
    merges = list(setting_reads(body))
    whole = list(idioms(body))
    assert len(merges) == len(whole), "a setting read outside the idiom"
    assert {key for key, _ in whole} == set(defaults), set(defaults) ^ {key for key, _ in whole}


@pytest.mark.parametrize("name", TEMPLATES)
def test_settings_admits_every_key_at_its_default_and_refuses_the_unknown(name):
    template = TEMPLATES[name]
    pattern = re.compile(template["Parameters"]["Settings"]["AllowedPattern"])
    defaults = template["Mappings"]["Defaults"]["Settings"]
    keys = set(re.findall(r"[(|]([A-Z][A-Za-z0-9]+)=", template["Parameters"]["Settings"]["AllowedPattern"]))
    assert keys == set(defaults), keys ^ set(defaults)
    everything = " ".join(f"{k}={v}" for k, v in defaults.items())
    assert pattern.fullmatch(everything), everything
    assert pattern.fullmatch("")
    assert pattern.fullmatch("  FunctionMemory=1024   FetchConcurrency=64 ")
    for refused in ("FunctionMemory=1024,FetchConcurrency=64", "Memory=1024", "FunctionMemory=lots",
                    "FunctionMemory=1024FetchConcurrency=64", "FunctionTimeout=45"):
        assert not pattern.fullmatch(refused), refused


def test_both_stacks_create_the_same_stores_and_alarm_topic():
    shared = set(SQS["Resources"]) & set(KAFKA["Resources"])
    assert shared >= {"ArchiveBucket", "ArchiveBucketPolicy", "RecordsTable", "AlarmTopic",
                      "ArchiveDatabase", "ArchivePayloadsTable", "AthenaResultsBucket", "ArchiveWorkGroup"}
    # The same watch on each stack's own function: test_every_path_has_the_same_watch.
    watch = {"Dashboard", "ExpiredUrlsAlarm", "PayloadAgeAlarm"}
    for name in shared - {"DataKey"} - watch:
        assert SQS["Resources"][name] == KAFKA["Resources"][name], name
    # The key's policy is the same but for Terra's statement (SQS only).
    sqs_key, kafka_key = (
        t["Resources"]["DataKey"]["Properties"]["KeyPolicy"]["Statement"] for t in (SQS, KAFKA)
    )
    assert sqs_key[:-1] == kafka_key
    assert sqs_key[-1]["Fn::If"][1]["Sid"] == "TerraSendsToTheQueue"
    for name in set(SQS["Conditions"]) & set(KAFKA["Conditions"]):
        assert SQS["Conditions"][name] == KAFKA["Conditions"][name], name
    for key in set(SQS_DEFAULTS) & set(KAFKA_DEFAULTS):
        assert SQS_DEFAULTS[key] == KAFKA_DEFAULTS[key], key


def test_the_kafka_stack_creates_no_sqs_path_and_the_sqs_stack_no_kafka_path():
    kafka_types = {body["Type"] for body in KAFKA["Resources"].values()}
    assert "AWS::IAM::User" not in kafka_types
    assert not [n for n in KAFKA["Resources"] if n.startswith(("Events", "SqsHandler", "TerraSender"))]
    assert not [n for n in SQS["Resources"] if n.startswith("Kafka")]
    assert all(queue.startswith("Kafka") for queue, body in KAFKA["Resources"].items() if body["Type"] == "AWS::SQS::Queue")


@pytest.mark.parametrize(
    "template, function",
    [("template.yaml", "SqsHandlerFunction"), ("kafka/template.yaml", "KafkaHandlerFunction")],
)
def test_sam_build_reads_the_architecture_and_size_out_of_settings(template, function):
    """`sam build` resolves the function's architecture itself (it picks the
    compiler target from it): through the Settings idiom, by default and
    with an override, as the docs' x86_64 build says."""
    from samcli.lib.providers.sam_function_provider import SamFunctionProvider
    from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

    def built(overrides):
        stacks, _ = SamLocalStackProvider.get_stacks(str(ROOT / template), parameter_overrides=overrides)
        (found,) = [f for f in SamFunctionProvider(stacks).get_all() if f.name == function]
        return found.architectures, str(found.memory)

    assert built({"KafkaBrokers": "b-1:9096"}) == (["arm64"], "512")
    tuned = {"KafkaBrokers": "b-1:9096", "Settings": "Architecture=x86_64 FunctionMemory=1024"}
    assert built(tuned) == (["x86_64"], "1024")


def test_retention_is_the_deployers_and_off_by_default():
    for template in TEMPLATES.values():
        defaults = template["Mappings"]["Defaults"]["Settings"]
        assert defaults["ArchiveRetentionDays"] == defaults["TableRetentionDays"] == ""
        variables = template["Globals"]["Function"]["Environment"]["Variables"]
        assert variables["TERRA_DYNAMODB_RETENTION_DAYS"] == setting("TableRetentionDays")
    rules = RESOURCES["ArchiveBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    condition, rule, otherwise = rules[1]["Fn::If"]
    assert (condition, otherwise) == ("HasArchiveRetention", {"Ref": "AWS::NoValue"})
    # Only the archive's own prefix, and the versions kept by the other rule.
    assert rule["Prefix"] == setting("S3Prefix")
    assert rule["ExpirationInDays"] == setting("ArchiveRetentionDays")
    assert rules[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    condition, ttl, otherwise = RESOURCES["RecordsTable"]["Properties"]["TimeToLiveSpecification"]["Fn::If"]
    assert (condition, ttl, otherwise) == (
        "HasTableRetention",
        {"AttributeName": "expires_at", "Enabled": True},
        {"Ref": "AWS::NoValue"},
    )
    sink = (ROOT / "src" / "sink" / "dynamodb" / "mod.rs").read_text()
    assert 'pub const EXPIRES_AT: &str = "expires_at";' in sink


def test_erasing_on_deauth_is_off_by_default_and_reaches_both_functions():
    for template in TEMPLATES.values():
        assert template["Mappings"]["Defaults"]["Settings"]["EraseOnDeauth"] == "false"
        variables = template["Globals"]["Function"]["Environment"]["Variables"]
        assert variables["TERRA_ERASE_ON_DEAUTH"] == setting("EraseOnDeauth")
        assert template["Conditions"]["EraseOnDeauthOn"] == {"Fn::Equals": [setting("EraseOnDeauth"), "true"]}


def test_tracing_is_active_by_default_and_reaches_both_functions_with_the_daemons_permissions():
    for name, template in TEMPLATES.items():
        assert template["Mappings"]["Defaults"]["Settings"]["Tracing"] == "Active", name
        assert template["Conditions"]["TracingActive"] == {"Fn::Equals": [setting("Tracing"), "Active"]}, name
        function = template["Globals"]["Function"]
        assert function["Tracing"] == {"Fn::If": ["TracingActive", "Active", "PassThrough"]}, name
        variables = function["Environment"]["Variables"]
        assert variables["TERRA_TRACING"] == {"Fn::If": ["TracingActive", "xray", "off"]}, name
    for role in ("SqsHandlerRole", "KafkaHandlerRole"):
        traces = [
            policy["Fn::If"]
            for policy in resource(role)["Policies"]
            if isinstance(policy, dict) and "Fn::If" in policy and policy["Fn::If"][1]["PolicyName"] == "traces"
        ]
        assert len(traces) == 1, role
        condition, policy, otherwise = traces[0]
        assert (condition, otherwise) == ("TracingActive", {"Ref": "AWS::NoValue"}), role
        assert policy["PolicyDocument"]["Statement"] == [
            {"Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Resource": "*"}
        ], role


def test_every_identity_the_stacks_create_takes_the_permissions_boundary():
    bounded = {"Fn::If": ["HasPermissionsBoundary", setting("PermissionsBoundaryArn"), {"Ref": "AWS::NoValue"}]}
    for name, template in TEMPLATES.items():
        identities = [
            logical
            for logical, body in template["Resources"].items()
            if body["Type"] in ("AWS::IAM::Role", "AWS::IAM::User")
        ]
        assert identities, name
        for logical in identities:
            assert template["Resources"][logical]["Properties"]["PermissionsBoundary"] == bounded, logical


def test_the_created_archive_logs_its_access_where_asked():
    logging = RESOURCES["ArchiveBucket"]["Properties"]["LoggingConfiguration"]["Fn::If"]
    condition, config, otherwise = logging
    assert (condition, otherwise) == ("ArchiveAccessLogged", {"Ref": "AWS::NoValue"})
    assert config["DestinationBucketName"] == setting("AccessLogBucket")
    assert SQS["Conditions"]["ArchiveAccessLogged"]["Fn::And"][0] == {"Condition": "CreateBucket"}


KEY = {"Fn::If": ["CreateKey", {"Fn::GetAtt": ["DataKey", "Arn"]}, {"Ref": "KmsKey"}]}
WITH_KEY = {"Fn::If": ["UseKey", KEY, {"Ref": "AWS::NoValue"}]}


@pytest.mark.parametrize("name", TEMPLATES)
def test_with_a_key_everything_that_holds_data_is_encrypted_with_it(name):
    """Every resource of a data-holding type takes the key when KmsKey is
    set: a type added without it fails here."""
    resources = TEMPLATES[name]["Resources"]
    keyed = {
        "AWS::S3::Bucket": lambda p: p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
            "ServerSideEncryptionByDefault"
        ]["KMSMasterKeyID"],
        "AWS::DynamoDB::Table": lambda p: p["SSESpecification"]["KMSMasterKeyId"],
        "AWS::SQS::Queue": lambda p: p["KmsMasterKeyId"],
        "AWS::SNS::Topic": lambda p: p["KmsMasterKeyId"],
        "AWS::Logs::LogGroup": lambda p: p["KmsKeyId"],
        "AWS::Athena::WorkGroup": lambda p: {
            "Fn::If": [
                "UseKey",
                p["WorkGroupConfiguration"]["ResultConfiguration"]["EncryptionConfiguration"]["KmsKey"]["Fn::If"][1],
                {"Ref": "AWS::NoValue"},
            ]
        },
    }
    holding = [(n, b) for n, b in resources.items() if b["Type"] in keyed]
    assert len(holding) >= 6, holding
    for logical, body in holding:
        assert keyed[body["Type"]](body["Properties"]) == WITH_KEY, logical
    table = resources["RecordsTable"]["Properties"]["SSESpecification"]
    assert table["SSEType"] == {"Fn::If": ["UseKey", "KMS", {"Ref": "AWS::NoValue"}]}
    assert resources["ArchiveBucket"]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "BucketKeyEnabled"
    ] is True
    # Untouched stores (Glue's catalog holds no payloads): nothing else of a data type.
    assert not [b["Type"] for b in resources.values() if b["Type"] in ("AWS::Kinesis::Stream", "AWS::EFS::FileSystem")]


def test_the_created_key_rotates_and_only_this_stacks_identities_use_it():
    key = RESOURCES["DataKey"]
    assert key["Condition"] == "CreateKey"
    assert key["DeletionPolicy"] == "Retain", "data encrypted with it outlives the stack"
    properties = key["Properties"]
    assert properties["EnableKeyRotation"] is True
    statements_by_sid = {
        s["Sid"]: s
        for s in (
            entry["Fn::If"][1] if "Fn::If" in entry else entry
            for entry in properties["KeyPolicy"]["Statement"]
        )
    }
    administer = statements_by_sid["TheAccountAdministersIt"]
    use_actions = {"kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncrypt*", "kms:*"}
    assert not use_actions & set(administer["Action"]), "the account administers, it does not read"
    use = statements_by_sid["ThisStacksIdentitiesUseIt"]
    assert use["Condition"] == {"StringEquals": {"aws:PrincipalTag/terra-sink:stack": {"Ref": "AWS::StackName"}}}
    terra = statements_by_sid["TerraSendsToTheQueue"]
    assert terra["Principal"] == {"AWS": {"Ref": "TerraAccess"}}
    assert terra["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"]
    assert terra["Condition"]["StringEquals"]["kms:ViaService"] == {"Fn::Sub": "sqs.${AWS::Region}.amazonaws.com"}
    assert statements_by_sid["CloudWatchPublishesAlarms"]["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    # Every identity the stacks create carries the tag the policy names, and
    # asks for the key only what its calls need.
    for name, template in TEMPLATES.items():
        for logical, body in template["Resources"].items():
            if body["Type"] in ("AWS::IAM::Role", "AWS::IAM::User"):
                tags = body["Properties"]["Tags"]
                assert {"Key": "terra-sink:stack", "Value": {"Ref": "AWS::StackName"}} in tags, logical
    for role in ("SqsHandlerRole", "KafkaHandlerRole"):
        condition, (statement,) = policy_named(role, "data-key")
        assert condition == "UseKey"
        assert statement["Resource"] == KEY
        assert set(statement["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt", "kms:DescribeKey"}
    condition, (statement,) = policy_named("TerraSenderUser", "queue-key")
    assert (condition, statement["Action"], statement["Resource"]) == (
        "UseKey",
        ["kms:GenerateDataKey", "kms:Decrypt"],
        KEY,
    )



@pytest.mark.parametrize("name", TEMPLATES)
def test_the_functions_join_your_vpc_with_the_network_permissions_lambda_needs(name):
    template = TEMPLATES[name]
    condition, vpc, otherwise = template["Globals"]["Function"]["VpcConfig"]["Fn::If"]
    assert (condition, otherwise) == ("FunctionsInVpc", {"Ref": "AWS::NoValue"})
    assert vpc == {
        "SubnetIds": {"Fn::Split": [",", setting("FunctionSubnetIds")]},
        "SecurityGroupIds": [setting("FunctionSecurityGroupId")],
    }
    assert template["Mappings"]["Defaults"]["Settings"]["FunctionSubnetIds"] == "", "outside a VPC by default"
    role = "SqsHandlerRole" if name == "template.yaml" else "KafkaHandlerRole"
    condition, (describe, interfaces) = policy_named(role, "function-vpc")
    assert condition == "FunctionsInVpc"
    assert (set(describe["Action"]), describe["Resource"]) == (
        {"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"},
        "*",
    )
    assert set(interfaces["Action"]) == {
        "ec2:CreateNetworkInterface",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    }
    assert interfaces["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:*"}
    for endpoint, service in (("ArchiveGatewayEndpoint", "s3"), ("TableGatewayEndpoint", "dynamodb")):
        body = template["Resources"][endpoint]
        assert body["Condition"] == "CreateGatewayEndpoints"
        assert body["Properties"]["VpcEndpointType"] == "Gateway"
        assert body["Properties"]["ServiceName"] == {"Fn::Sub": f"com.amazonaws.${{AWS::Region}}.{service}"}
        assert body["Properties"]["RouteTableIds"] == {"Fn::Split": [",", setting("GatewayEndpointRouteTableIds")]}
