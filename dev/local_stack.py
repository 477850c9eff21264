"""template.yaml as a stack in moto's CloudFormation: the SAM transform run
offline (samtranslator, as `sam validate` runs it), then create-stack.

moto 5.2 does not drop `AWS::NoValue` from lists (an IAM role whose optional
policy is off fails to create), so conditions are resolved here first, from
the same parameter values, exactly as CloudFormation would resolve them.
"""

import io
import json
import os
import pathlib
import zipfile

from cfnlint.decode import cfn_yaml
from samtranslator.translator.transform import transform

ROOT = pathlib.Path(__file__).resolve().parents[2]
CODE_BUCKET = "terra-sink-local-code"
CODE_KEY = "bootstrap.zip"
NO_VALUE = {"Ref": "AWS::NoValue"}


class _NoManagedPolicies:
    """The template names no AWS managed policies: nothing to look up."""

    def load(self):
        return {}


def translated_template():
    """The SAM template translated to plain CloudFormation, code in S3."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    template["Globals"]["Function"]["CodeUri"] = f"s3://{CODE_BUCKET}/{CODE_KEY}"
    return transform(template, {}, _NoManagedPolicies())


def parameter_values(template, overrides):
    values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    values.update(overrides)
    return values


def _condition(node, parameters, conditions, resolved):
    if isinstance(node, dict) and len(node) == 1:
        (function, args), = node.items()
        if function == "Condition":
            return _named(args, parameters, conditions, resolved)
        if function == "Fn::Equals":
            left, right = (_value(a, parameters) for a in args)
            return left == right
        if function == "Fn::Not":
            return not _condition(args[0], parameters, conditions, resolved)
        if function == "Fn::And":
            return all(_condition(a, parameters, conditions, resolved) for a in args)
        if function == "Fn::Or":
            return any(_condition(a, parameters, conditions, resolved) for a in args)
    raise ValueError(f"unsupported condition {node!r}")


def _named(name, parameters, conditions, resolved):
    if name not in resolved:
        resolved[name] = _condition(conditions[name], parameters, conditions, resolved)
    return resolved[name]


def _value(node, parameters):
    if isinstance(node, dict) and "Ref" in node:
        return parameters[node["Ref"]]
    return str(node)


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


def resolved_template(overrides=None, without=()):
    """The translated template for these parameter values, its conditions
    decided, and the parameters to create the stack with; resources named in
    `without` are left out (moto cannot create them)."""
    template = translated_template()
    parameters = parameter_values(template, overrides or {})
    conditions = template.get("Conditions", {})
    truth = {}
    for name in conditions:
        _named(name, parameters, conditions, truth)
    for section in ("Resources", "Outputs"):
        template[section] = {
            name: body
            for name, body in template.get(section, {}).items()
            if truth.get(body.get("Condition"), True) and name not in without
        }
        for body in template[section].values():
            body.pop("Condition", None)
    template = _strip(template, truth)
    template.pop("Conditions", None)
    # Rules are checked by CloudFormation before anything is created; the
    # template's own tests hold them.
    template.pop("Rules", None)
    return template, parameters


def deploy(session, stack_name="terra-sink", overrides=None, without=()):
    """Creates the stack in the moto `session` reaches (a boto3 session, or
    anything with its `client(name)`); returns the stack's outputs."""
    template, parameters = resolved_template(overrides, without)
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
