"""template.yaml (or kafka/template.yaml, for the Kafka function) as a stack
in moto's CloudFormation: the SAM transform run offline (samtranslator, as
`sam validate` runs it), then create-stack.

Where moto 5.2 differs from CloudFormation, the difference is made up here:
- It does not drop `AWS::NoValue` from lists (an IAM role whose optional
  policy is off fails to create), so conditions are resolved first, from the
  same parameter values, exactly as CloudFormation would resolve them.
- It keeps a number a setting's Fn::Select computes as text, where
  CloudFormation converts it for an integer property (a batch size), so
  settings are read out of Settings here first, from the same parameters.
- It drops an IAM user's inline `Policies` and keeps a role's in a form its
  own evaluator cannot read, and creates no queue policy
  (`AWS::SQS::QueuePolicy`), so the template's documents are put back
  through the IAM and SQS APIs, their references resolved from the stack.
- Terra's AWS account is not in moto: a role of moto's account, with no
  policy of its own, stands in for Terra's principal (`TERRA_STAND_IN`),
  so that only the queue policy can let it in.

Run as a program against a moto server (`make demo` and the stack tests do),
it deploys the stack, reads back what the local run needs, switches IAM
enforcement on and prints it all as JSON: see `local_deployment`.
"""

import argparse
import io
import json
import os
import pathlib
import re
import sys
import urllib.request
import warnings
import zipfile

from cfnlint.decode import cfn_yaml
from samtranslator.translator.transform import transform

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The SQS stack, and the Kafka stack built from the same code.
SQS_TEMPLATE = ROOT / "template.yaml"
KAFKA_TEMPLATE = ROOT / "kafka" / "template.yaml"
CODE_BUCKET = "terra-sink-local-code"
CODE_KEY = "bootstrap.zip"
NO_VALUE = {"Ref": "AWS::NoValue"}


class _NoManagedPolicies:
    """The template names no AWS managed policies: nothing to look up."""

    def load(self):
        return {}


def template_of(function):
    """The template that deploys `function`."""
    return KAFKA_TEMPLATE if function == "KafkaHandlerFunction" else SQS_TEMPLATE


def translated_template(path=SQS_TEMPLATE):
    """The SAM template translated to plain CloudFormation, code in S3."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    template = json.loads(json.dumps(cfn_yaml.load(str(path))))
    template["Globals"]["Function"]["CodeUri"] = f"s3://{CODE_BUCKET}/{CODE_KEY}"
    return transform(template, {}, _NoManagedPolicies())


def parameter_values(template, overrides):
    values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    values.update(overrides)
    return values


def _condition(node, context, conditions, resolved):
    if isinstance(node, dict) and len(node) == 1:
        (function, args), = node.items()
        if function == "Condition":
            return _named(args, context, conditions, resolved)
        if function == "Fn::Equals":
            left, right = (value(a, *context) for a in args)
            return left == right
        if function == "Fn::Not":
            return not _condition(args[0], context, conditions, resolved)
        if function == "Fn::And":
            return all(_condition(a, context, conditions, resolved) for a in args)
        if function == "Fn::Or":
            return any(_condition(a, context, conditions, resolved) for a in args)
    raise ValueError(f"unsupported condition {node!r}")


def _named(name, context, conditions, resolved):
    if name not in resolved:
        resolved[name] = _condition(conditions[name], context, conditions, resolved)
    return resolved[name]


def value(node, parameters, mappings):
    """A value the template computes from parameters alone: Ref, and the
    Fn::FindInMap, Fn::Join, Fn::Split and Fn::Select that read a setting
    out of Settings (see the template's "How settings work")."""
    if isinstance(node, dict) and len(node) == 1:
        (function, args), = node.items()
        if function == "Ref":
            return parameters[args]
        if function == "Fn::FindInMap":
            name, key, attribute = (value(a, parameters, mappings) for a in args)
            return str(mappings[name][key][attribute])
        if function == "Fn::Join":
            separator, parts = args
            return separator.join(value(p, parameters, mappings) for p in parts)
        if function == "Fn::Split":
            separator, text = args
            return value(text, parameters, mappings).split(separator)
        if function == "Fn::Select":
            index, items = args
            items = value(items, parameters, mappings) if isinstance(items, dict) else items
            return items[int(index)]
    if isinstance(node, dict):
        raise ValueError(f"not computed from parameters alone: {node!r}")
    return str(node)


def _settings_read(node, context):
    """Every Fn::Select computed from parameters alone replaced by its value,
    whole numbers as numbers (as CloudFormation converts them)."""
    if isinstance(node, dict):
        if set(node) == {"Fn::Select"}:
            try:
                result = value(node, *context)
            except (KeyError, ValueError):  # names a resource: CloudFormation's to resolve
                result = None
            if isinstance(result, str):
                return int(result) if re.fullmatch(r"-?[0-9]+", result) else result
        return {k: _settings_read(v, context) for k, v in node.items()}
    if isinstance(node, list):
        return [_settings_read(v, context) for v in node]
    return node


def _strip(node, truth):
    """Fn::If taken, AWS::NoValue removed, recursively."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, when_true, when_false = node["Fn::If"]
            return _strip(when_true if truth[name] else when_false, truth)
        out = {}
        for key, value in node.items():
            value = _strip(value, truth)
            if value != NO_VALUE:
                out[key] = value
        return out
    if isinstance(node, list):
        return [v for v in (_strip(v, truth) for v in node) if v != NO_VALUE]
    return node


def setting_read(key):
    """How a template reads setting `key` out of Settings (the templates'
    "How settings work"): the deployer's pairs, then the default, and the
    first value after " key=" in them."""
    merged = {
        "Fn::Join": [
            "",
            [" ", {"Ref": "Settings"}, f" {key}=", {"Fn::FindInMap": ["Defaults", "Settings", key]}, " "],
        ]
    }
    after = {"Fn::Select": [1, {"Fn::Split": [f" {key}=", merged]}]}
    return {"Fn::Select": [0, {"Fn::Split": [" ", after]}]}


def setting(key, parameters, mappings):
    """Setting `key` as the template reads it from these parameters."""
    return value(setting_read(key), parameters, mappings)


def resolved_template(overrides=None, without=(), path=SQS_TEMPLATE):
    """The translated template for these parameter values, its conditions
    decided, and the parameters to create the stack with; resources named in
    `without` are left out (moto cannot create them)."""
    template = translated_template(path)
    parameters = parameter_values(template, overrides or {})
    conditions = template.get("Conditions", {})
    truth = {}
    context = (parameters, template.get("Mappings", {}))
    for name in conditions:
        _named(name, context, conditions, truth)
    for section in ("Resources", "Outputs"):
        template[section] = {
            name: body
            for name, body in template.get(section, {}).items()
            if truth.get(body.get("Condition"), True) and name not in without
        }
        for body in template[section].values():
            body.pop("Condition", None)
    template = _strip(template, truth)
    for section in ("Resources", "Outputs"):
        template[section] = _settings_read(template[section], context)
    template.pop("Conditions", None)
    # Rules are checked by CloudFormation before anything is created; the
    # template's own tests hold them.
    template.pop("Rules", None)
    return template, parameters


def deploy(session, stack_name="terra-sink", overrides=None, without=(), path=SQS_TEMPLATE):
    """Creates the stack in the moto `session` reaches (a boto3 session, or
    anything with its `client(name)`); returns the stack's outputs."""
    template, parameters = resolved_template(overrides, without, path)
    s3 = session.client("s3")
    s3.create_bucket(Bucket=CODE_BUCKET)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bootstrap", b"")
    s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=archive.getvalue())
    cloudformation = session.client("cloudformation")
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(template),
        Parameters=[
            {"ParameterKey": k, "ParameterValue": v}
            for k, v in parameters.items()
            if k in template.get("Parameters", {})
        ],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"}


class Endpoint:
    """boto3 clients for one moto server, with the given credentials."""

    def __init__(self, url, key="testing", secret="testing", token=None):
        self.url, self.key, self.secret, self.token = url, key, secret, token

    def client(self, name):
        import boto3

        return boto3.client(
            name,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            aws_session_token=self.token,
        )


class StackReferences:
    """Resolves Ref, Fn::GetAtt and Fn::Sub in the template's policy
    documents to the stack's physical resources, as CloudFormation would."""

    def __init__(self, admin, stack_name, parameters, mappings):
        cloudformation = admin.client("cloudformation")
        summaries = cloudformation.list_stack_resources(StackName=stack_name)[
            "StackResourceSummaries"
        ]
        self.physical = {s["LogicalResourceId"]: s["PhysicalResourceId"] for s in summaries}
        self.types = {s["LogicalResourceId"]: s["ResourceType"] for s in summaries}
        self.values = dict(PSEUDO, **parameters, **{"AWS::StackName": stack_name})
        self.parameters, self.mappings = parameters, mappings
        self.sqs = admin.client("sqs")

    def ref(self, name):
        return self.physical.get(name, self.values.get(name))

    def arn(self, name):
        kind, physical = self.types[name], self.physical[name]
        if kind == "AWS::SQS::Queue":
            return self.sqs.get_queue_attributes(QueueUrl=physical, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
        if kind == "AWS::KMS::Key":
            return f"arn:aws:kms:us-east-1:123456789012:key/{physical}"
        if kind == "AWS::Logs::LogGroup":
            return f"arn:aws:logs:us-east-1:123456789012:log-group:{physical}:*"
        raise ValueError(f"no ARN for {kind}")

    def sub(self, text, variables):
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
            if set(node) in ({"Fn::Join"}, {"Fn::Select"}, {"Fn::FindInMap"}):
                return value(node, self.parameters, self.mappings)
            if set(node) == {"Fn::Sub"}:
                sub = node["Fn::Sub"]
                text, variables = (sub, {}) if isinstance(sub, str) else sub
                return self.sub(text, variables)
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v) for v in node]
        return node


class Stack:
    """A stack created from a template in a moto server, read back."""

    def __init__(
        self, admin, stack_name="terra-sink", overrides=None, without=(), path=SQS_TEMPLATE
    ):
        self.admin, self.name = admin, stack_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.outputs = deploy(admin, stack_name, overrides, without, path)
        self.template, self.parameters = resolved_template(overrides, without, path)
        self.references = StackReferences(
            admin, stack_name, self.parameters, self.template.get("Mappings", {})
        )

    def setting(self, key):
        """A setting as this stack's parameters make it."""
        return setting(key, self.parameters, self.template.get("Mappings", {}))

    def policies(self, logical_id):
        """The identity's inline policies as the template writes them, their
        references resolved: (name, document as JSON)."""
        for policy in self.template["Resources"][logical_id]["Properties"].get("Policies", []):
            document = self.references.resolve(policy["PolicyDocument"])
            yield policy["PolicyName"], json.dumps(document)

    def restore_policies(self):
        """Puts every user's and role's inline policies, and every queue
        policy, back as the template writes them (moto's CloudFormation loses
        them)."""
        iam = self.admin.client("iam")
        sqs = self.admin.client("sqs")
        for logical_id, resource in self.template["Resources"].items():
            if resource["Type"] == "AWS::SQS::QueuePolicy":
                properties = self.references.resolve(resource["Properties"])
                for queue_url in properties["Queues"]:
                    sqs.set_queue_attributes(
                        QueueUrl=queue_url,
                        Attributes={"Policy": json.dumps(properties["PolicyDocument"])},
                    )
                continue
            physical = self.references.ref(logical_id)
            if resource["Type"] == "AWS::IAM::User":
                for name, document in self.policies(logical_id):
                    iam.put_user_policy(UserName=physical, PolicyName=name, PolicyDocument=document)
            elif resource["Type"] == "AWS::IAM::Role":
                for name, document in self.policies(logical_id):
                    iam.put_role_policy(RoleName=physical, PolicyName=name, PolicyDocument=document)

    def role_credentials(self, logical_id):
        """Credentials for the stack's role, as Lambda's would be (AssumeRole)."""
        iam = self.admin.client("iam")
        role_arn = iam.get_role(RoleName=self.references.ref(logical_id))["Role"]["Arn"]
        return self.admin.client("sts").assume_role(
            RoleArn=role_arn, RoleSessionName=logical_id
        )["Credentials"]


def enforce_iam(url):
    """From now on moto checks every request against its caller's policies."""
    request = urllib.request.Request(
        url + "/moto-api/reset-auth",
        data=b"0",
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5)


OBSERVER = "terra-sink-local-observer"
# Stands in for Terra's principal (TerraAccess): a role with no policy of
# its own, which anyone in moto's account may assume.
TERRA_STAND_IN = "terra-stand-in"


def terra_stand_in(admin):
    """Creates the role standing in for Terra's principal; returns its ARN."""
    iam = admin.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{PSEUDO['AWS::AccountId']}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    return iam.create_role(RoleName=TERRA_STAND_IN, AssumeRolePolicyDocument=json.dumps(trust))[
        "Role"
    ]["Arn"]


def as_terra(admin, terra_access):
    """Credentials Terra would send with: the stand-in role's session, or a
    key created for the stack's sender user (TerraAccess access-key)."""
    if terra_access["user"]:
        key = admin.client("iam").create_access_key(UserName=terra_access["user"])["AccessKey"]
        return _key(key)
    credentials = admin.client("sts").assume_role(
        RoleArn=terra_access["role"], RoleSessionName="terra"
    )["Credentials"]
    return {
        "access_key_id": credentials["AccessKeyId"],
        "secret_access_key": credentials["SecretAccessKey"],
        "session_token": credentials["SessionToken"],
    }


# moto cannot create a Kafka event source mapping (it wants an SQS, Kinesis
# or DynamoDB stream ARN): a Kafka stack is deployed without it, and its
# settings are read from the template as CloudFormation would create it.
KAFKA_MAPPING = "KafkaEventSourceMapping"


# The two settings a local run changes: the payload server listens on
# 127.0.0.1 over http (the stack allows Terra's hosts over https).
LOOPBACK_PAYLOAD_URLS = {
    "TERRA_ALLOWED_URL_HOSTS": "127.0.0.1",
    "TERRA_ALLOW_INSECURE_URLS": "true",
}


def local_deployment(url, function="SqsHandlerFunction", overrides=None):
    """Deploys the stack of `function` (template_of) with these parameter
    `overrides` into the moto server at `url` and returns what a local run
    of `function` needs, all read back from the stack:

    - `outputs`: the stack's outputs;
    - `terra_sender` (the SQS stack only): what Terra sends with, by
      default a session of the role standing in for Terra's principal
      (`TERRA_STAND_IN`, given to the stack as `TerraAccess`), with
      `TerraAccess=access-key` a key created for `TerraSenderUser`, as the
      docs tell users to create one;
    - `function`: name, role, timeout, memory and environment from
      Lambda's GetFunctionConfiguration (log settings from the function's
      resource, which moto does not keep), and `credentials` for its role
      from STS AssumeRole; the environment as a local run has it, payload
      URLs allowed on 127.0.0.1 over http (`LOOPBACK_PAYLOAD_URLS`), set in
      the function's configuration too;
    - `mapping`: the function's SQS event source mapping (batch size,
      window, response types, maximum concurrency), left disabled so moto
      does not invoke the function itself, and `queue`: the mapped queue's
      URL, visibility timeout and redrive policy;
    - or, for the Kafka function, `kafka_mapping`: the mapping's batch size,
      response types and retry limit from the template's resource, its
      conditions and parameters resolved as CloudFormation would;
    - `observer`: a key allowed everything, for the harness to look on.

    IAM enforcement is on when it returns: from then on every call is
    checked against the caller's policies."""
    admin = Endpoint(url)
    overrides = overrides or {}
    path = template_of(function)
    kafka = path == KAFKA_TEMPLATE
    terra_role = None
    if not kafka and overrides.get("TerraAccess") != "access-key":
        terra_role = terra_stand_in(admin)
        overrides = {"TerraAccess": terra_role, **overrides}
    stack = Stack(admin, overrides=overrides, without=(KAFKA_MAPPING,) if kafka else (), path=path)
    stack.restore_policies()
    iam = admin.client("iam")
    sender = (
        None
        if kafka
        else as_terra(
            admin, {"role": terra_role, "user": stack.outputs.get("TerraSenderUserName")}
        )
    )
    iam.create_user(UserName=OBSERVER)
    iam.put_user_policy(
        UserName=OBSERVER,
        PolicyName="look-on",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    observer = iam.create_access_key(UserName=OBSERVER)["AccessKey"]

    lambda_ = admin.client("lambda")
    function_name = stack.references.ref(function)
    configuration = lambda_.get_function_configuration(FunctionName=function_name)
    # What the local run gives the handler is what Lambda's configuration
    # says, so a tool that reads the function (terra-sink smoke) sees what
    # runs: payload URLs from the local servers, on 127.0.0.1 over http.
    # moto keeps what CloudFormation passed as it came: the variables'
    # numbers as numbers (Lambda takes text), the timeout as text (Lambda
    # answers a number, which the Rust SDK insists on). Set as Lambda has
    # them.
    variables = {
        name: str(value)
        for name, value in configuration.get("Environment", {}).get("Variables", {}).items()
    }
    configuration = lambda_.update_function_configuration(
        FunctionName=function_name,
        Environment={"Variables": {**variables, **LOOPBACK_PAYLOAD_URLS}},
        Timeout=int(configuration["Timeout"]),
        MemorySize=int(configuration["MemorySize"]),
    )
    role_logical_id = next(
        logical_id
        for logical_id, physical in stack.references.physical.items()
        if stack.references.types.get(logical_id) == "AWS::IAM::Role"
        and configuration["Role"].endswith("/" + physical)
    )
    credentials = stack.role_credentials(role_logical_id)
    sqs_source = _sqs_source(admin, lambda_, function_name)
    # moto's Lambda does not keep LoggingConfig: the function's own resource
    # in the template says what Lambda would run it with.
    logging = configuration.get("LoggingConfig") or stack.template["Resources"][function][
        "Properties"
    ].get("LoggingConfig", {})

    kafka_mapping = None
    if function == "KafkaHandlerFunction":
        template, _ = resolved_template(overrides, path=path)
        properties = stack.references.resolve(template["Resources"][KAFKA_MAPPING]["Properties"])
        kafka_mapping = {
            "topic": properties["Topics"][0],
            "batch_size": int(properties["BatchSize"]),
            "function_response_types": properties.get("FunctionResponseTypes", []),
            "maximum_retry_attempts": (
                int(properties["MaximumRetryAttempts"])
                if "MaximumRetryAttempts" in properties
                else None
            ),
        }

    enforce_iam(url)
    return {
        **sqs_source,
        "kafka_mapping": kafka_mapping,
        "outputs": stack.outputs,
        "terra_sender": sender,
        "observer": _key(observer),
        "function": {
            "name": configuration["FunctionName"],
            "role_name": configuration["Role"].rsplit("/", 1)[1],
            "timeout_secs": configuration["Timeout"],
            "memory_mb": configuration["MemorySize"],
            "log_format": logging.get("LogFormat", "Text"),
            "log_level": logging.get("ApplicationLogLevel"),
            "environment": configuration.get("Environment", {}).get("Variables", {}),
            "credentials": {
                "access_key_id": credentials["AccessKeyId"],
                "secret_access_key": credentials["SecretAccessKey"],
                "session_token": credentials["SessionToken"],
            },
        },
    }


def _sqs_source(admin, lambda_, function_name):
    """The function's SQS mapping (disabled: the local mapping invokes the
    function, not moto) and the queue it reads; empty when it has none."""
    mappings = lambda_.list_event_source_mappings(FunctionName=function_name)[
        "EventSourceMappings"
    ]
    if not mappings:
        return {"mapping": None, "queue": None}
    (mapping,) = mappings
    lambda_.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
    sqs = admin.client("sqs")
    queue_arn = mapping["EventSourceArn"]
    queue_url = sqs.get_queue_url(QueueName=queue_arn.rsplit(":", 1)[1])["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    dead_letter_url = sqs.get_queue_url(QueueName=redrive["deadLetterTargetArn"].rsplit(":", 1)[1])[
        "QueueUrl"
    ]
    return {
        "mapping": {
            "batch_size": mapping["BatchSize"],
            "maximum_batching_window_secs": mapping.get("MaximumBatchingWindowInSeconds", 0),
            "function_response_types": mapping.get("FunctionResponseTypes", []),
            "maximum_concurrency": mapping.get("ScalingConfig", {}).get("MaximumConcurrency"),
        },
        "queue": {
            "url": queue_url,
            "visibility_timeout_secs": int(attributes["VisibilityTimeout"]),
            "max_receive_count": int(redrive["maxReceiveCount"]),
            "dead_letter_queue_url": dead_letter_url,
        },
    }


def _key(access_key):
    return {
        "access_key_id": access_key["AccessKeyId"],
        "secret_access_key": access_key["SecretAccessKey"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the moto server, http://127.0.0.1:PORT")
    parser.add_argument("--function", default="SqsHandlerFunction", help="the template's function")
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter other than its default (repeatable)",
    )
    arguments = parser.parse_args()
    overrides = dict(p.split("=", 1) for p in arguments.parameter)
    json.dump(local_deployment(arguments.endpoint, arguments.function, overrides), sys.stdout)


if __name__ == "__main__":
    main()
