"""The read side of template.yaml (issue 13): ReadApi, ReadApiFunction, its role, alarms, dashboard row, output.

Where SAM's transform decides the outcome (routes, authorisation, CORS, the stage) the assertions run on what
the SAM translator makes of the template, which is what CloudFormation deploys; the rest on the template as
loaded. Every rule about AWS behaviour cites the page it comes from.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from samtranslator.public.exceptions import InvalidDocumentException  # type: ignore[import-untyped]
from samtranslator.translator.transform import transform  # type: ignore[import-untyped]

from devicepipe_tools.template import ROOT, function_environment, resource
from tests.unit.test_template import IN_VPC_AND_TRACED, alarms_on, on, resources_of, statements

CONTRACT = (ROOT / "docs" / "read-api.md").read_text()

#: The routes of docs/read-api.md, all GET.
ROUTES = {
    "/",
    "/health",
    "/devices/{device_id}/latest",
    "/devices/{device_id}/readings",
    "/branches",
    "/branches/{branch_id}/devices",
    "/branches/{branch_id}/report",  # issue 14: the stored branch report (tests/unit/test_template_reports.py)
}
OPEN_ROUTES = {"/"}  # the static page: no data, so no auth; its data calls are authorised

#: The stage SAM creates for an HttpApi without StageName, served at the root of the API's URL.
#: https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-stages.html
STAGE = "$default"


class _NoManagedPolicies:
    """The translator looks AWS managed policies up only for functions without a Role; ours all have one."""

    def load(self) -> dict[str, str]:
        return {}


def sam_transform(template: dict[str, Any], **parameters: str) -> dict[str, Any]:
    """What the AWS::Serverless transform makes of ``template``, offline (code locations made S3 URIs)."""
    fragment = copy.deepcopy(template)
    for res in fragment["Resources"].values():
        props = res.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = f"s3://artifacts/{props[key]}"
    result: dict[str, Any] = transform(fragment, parameters, _NoManagedPolicies())
    return result


@pytest.fixture(scope="module")
def deployed(template: dict[str, Any]) -> dict[str, Any]:
    return sam_transform(template)


def api_body(deployed_template: dict[str, Any]) -> dict[str, Any]:
    api = deployed_template["Resources"]["ReadApi"]
    assert api["Type"] == "AWS::ApiGatewayV2::Api"
    body: dict[str, Any] = api["Properties"]["Body"]
    return body


def operations(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in body["paths"].items() for method, op in item.items()}


def contract_names(section: str) -> set[str]:
    """The backticked names of one ``## section`` of docs/read-api.md."""
    text = CONTRACT.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))


def test_routes_are_the_contracts_gets_on_read_api_with_payload_v2(
    template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    # Given the function's HttpApi events, the one list of routes (the local stack serves the same)
    events = resource(template, "ReadApiFunction")["Properties"]["Events"].values()
    assert all(e["Type"] == "HttpApi" and e["Properties"]["ApiId"] == {"Ref": "ReadApi"} for e in events)
    assert {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events} == {("GET", r) for r in ROUTES}
    # When SAM turns them into the API definition
    ops = operations(api_body(deployed))
    # Then the API has exactly those routes (DefinitionBody adds none), each a Lambda proxy integration with
    # payload format 2.0 - SAM's default for HttpApi events:
    # https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-property-function-httpapi.html
    assert set(ops) == {("GET", r) for r in ROUTES}
    for op in ops.values():
        integration = op["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and integration["payloadFormatVersion"] == "2.0"
        assert integration["uri"]["Fn::Sub"].endswith("${ReadApiFunction.Arn}/invocations")


def test_every_data_route_is_authorised_and_only_the_page_is_open(deployed: dict[str, Any]) -> None:
    # Given the deployed API definition
    ops = operations(api_body(deployed))
    # Then every route but the page names the ReadApiAuth scheme, and the page opts out with SAM's NONE
    # (https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-property-function-httpapifunctionauth.html);
    # API Gateway applies security per operation only, never from the document root:
    # https://github.com/amazon-archives/aws-apigateway-importer/issues/204
    for (_, path), op in ops.items():
        assert op["security"] == ([{"NONE": []}] if path in OPEN_ROUTES else [{"ReadApiAuth": []}]), path


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
}


def test_read_api_auth_is_sigv4_by_default_and_a_jwt_authorizer_on_request(
    template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    # Given the parameter that picks the mode
    param = template["Parameters"]["ApiAuth"]
    assert param["Default"] == "IAM" and param["AllowedValues"] == ["IAM", "JWT"]
    assert template["Conditions"]["UseJwtAuth"] == {"Fn::Equals": [{"Ref": "ApiAuth"}, "JWT"]}
    # When CloudFormation resolves the one scheme every data route names
    scheme = api_body(deployed)["components"]["securitySchemes"]["ReadApiAuth"]
    condition, jwt, sigv4 = scheme["Fn::If"]
    assert condition == "UseJwtAuth"
    # Then IAM mode is SigV4, "awsSigv4" on an apiKey scheme in the Authorization header:
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-swagger-extensions-authtype.html
    assert sigv4 == {
        "type": "apiKey",
        "name": "Authorization",
        "in": "header",
        "x-amazon-apigateway-authtype": "awsSigv4",
    }
    # and JWT mode a jwt authorizer with the issuer and audiences of the parameters (a Cognito user pool's
    # issuer is https://cognito-idp.<region>.amazonaws.com/<pool id>, its audience the app client ids):
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-swagger-extensions-authorizer.html
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-jwt-authorizer.html
    assert jwt["type"] == "oauth2"
    assert jwt["x-amazon-apigateway-authorizer"] == {
        "type": "jwt",
        "identitySource": "$request.header.Authorization",
        "jwtConfiguration": {"issuer": {"Ref": "JwtIssuer"}, "audience": {"Ref": "JwtAudience"}},
    }
    # and a JWT stack without an issuer or an audience is refused before anything is created
    rule = template["Rules"]["JwtAuthNeedsIssuerAndAudience"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "ApiAuth"}, "JWT"]}
    asserted = json.dumps(rule["Assertions"])
    assert '"Ref": "JwtIssuer"' in asserted and '"Ref": "JwtAudience"' in asserted
    # using only the functions a rule may use:
    # https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/intrinsic-function-reference-rules.html
    assert set(re.findall(r'"(Fn::\w+)"', json.dumps(rule))) <= RULE_FUNCTIONS


@pytest.mark.parametrize(
    ("auth", "refusal"),
    [
        ({"Fn::If": ["UseJwtAuth", {"DefaultAuthorizer": "Jwt"}, {"DefaultAuthorizer": "AWS_IAM"}]}, "'Auth'"),
        ({"EnableIamAuthorizer": True, "DefaultAuthorizer": {"Fn::If": ["UseJwtAuth", "Jwt", "AWS_IAM"]}}, "string"),
    ],
)
def test_sam_takes_no_intrinsic_in_http_api_auth_hence_the_conditional_scheme(
    template: dict[str, Any], auth: dict[str, Any], refusal: str
) -> None:
    # Given ReadApi choosing its authorizer with !If (the obvious design)
    variant = copy.deepcopy(template)
    variant["Resources"]["ReadApi"]["Properties"]["Auth"] = auth
    # When transformed, then SAM refuses it: Auth and DefaultAuthorizer are resolved at transform time
    # (DefaultAuthorizer is a String:
    # https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-property-httpapi-httpapiauth.html;
    # https://github.com/aws/serverless-application-model/issues/1184 and issues/1955)
    with pytest.raises(InvalidDocumentException) as refused:
        sam_transform(variant)
    assert any(refusal in cause.message for cause in refused.value.causes)


def test_cors_is_off_unless_origins_are_given_and_then_allows_get_only(
    template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    # Given no CorsAllowOrigins (the default): the CORS configuration resolves to nothing
    assert template["Parameters"]["CorsAllowOrigins"]["Default"] == ""
    assert template["Conditions"]["HasCorsOrigins"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "CorsAllowOrigins"}, ""]}]}
    off = api_body(deployed)["x-amazon-apigateway-cors"]["Fn::If"]
    assert off[0] == "HasCorsOrigins" and off[2] == {"Ref": "AWS::NoValue"}
    # When origins are given
    with_origins = sam_transform(template, CorsAllowOrigins="https://a.example,https://b.example")
    _, cors, _ = api_body(with_origins)["x-amazon-apigateway-cors"]["Fn::If"]
    # Then exactly those origins may call, with GET only (SAM writes CorsConfiguration as the API's
    # x-amazon-apigateway-cors; API Gateway then answers preflight requests itself):
    # https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-property-httpapi-httpapicorsconfiguration.html
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-cors.html
    assert cors["allowOrigins"] == {"Fn::Split": [",", "https://a.example,https://b.example"]}
    assert cors["allowMethods"] == ["GET"]
    assert "allowCredentials" not in cors


def test_the_stage_is_throttled_by_parameters(template: dict[str, Any], deployed: dict[str, Any]) -> None:
    # Given the throttling parameters, with a burst above the steady rate
    params = template["Parameters"]
    assert 0 < params["ReadApiThrottlingRateLimit"]["Default"] <= params["ReadApiThrottlingBurstLimit"]["Default"]
    # Then the $default stage applies them to every route:
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-throttling.html
    (stage,) = [r["Properties"] for r in resources_of(deployed, "AWS::ApiGatewayV2::Stage").values()]
    assert stage["ApiId"] == {"Ref": "ReadApi"} and stage["StageName"] == STAGE
    assert stage["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ReadApiThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ReadApiThrottlingBurstLimit"},
    }


#: The variables an HTTP API access log may use (a subset we care about):
#: https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-logging-variables.html
LOG_VARIABLES = {
    "$context.requestId",
    "$context.identity.sourceIp",
    "$context.requestTime",
    "$context.routeKey",
    "$context.path",
    "$context.status",
    "$context.protocol",
    "$context.responseLength",
    "$context.responseLatency",
    "$context.integrationLatency",
    "$context.integrationStatus",
    "$context.integrationErrorMessage",
    "$context.error.message",
    "$context.authorizer.error",
    "$context.identity.userArn",
}


def test_access_log_is_json_of_context_variables_in_an_encrypted_group(template: dict[str, Any]) -> None:
    # Given the stage's access log settings
    settings = resource(template, "ReadApi")["Properties"]["AccessLogSettings"]
    # When the format is read as JSON (API Gateway writes it with the variables substituted)
    fields = json.loads(settings["Format"])
    # Then it is one flat object of documented $context variables, with the fields operators search by
    assert set(fields.values()) <= LOG_VARIABLES
    assert {
        "requestId": "$context.requestId",
        "ip": "$context.identity.sourceIp",
        "routeKey": "$context.routeKey",
        "status": "$context.status",
        "latency": "$context.responseLatency",
        "integrationError": "$context.integrationErrorMessage",
    }.items() <= fields.items()
    # and it goes to its own group, encrypted and expiring like the functions' logs
    assert settings["DestinationArn"] == {"Fn::GetAtt": ["ReadApiAccessLogGroup", "Arn"]}
    group = resource(template, "ReadApiAccessLogGroup")["Properties"]
    assert group["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    # /aws/vendedlogs/ keeps log delivery clear of the CloudWatch Logs resource-policy size limit:
    # https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/AWS-logs-infrastructure-CWL.html
    assert group["LogGroupName"]["Fn::Sub"].startswith("/aws/vendedlogs/")


TABLE = "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${TableName}"


def test_read_role_grants_exactly_the_reads_it_needs(template: dict[str, Any]) -> None:
    # Given the read function's own role
    assert resource(template, "ReadApiFunction")["Properties"]["Role"] == {"Fn::GetAtt": ["ReadApiRole", "Arn"]}
    role = resource(template, "ReadApiRole")["Properties"]
    assert "ManagedPolicyArns" not in role and len(role["Policies"]) == 1
    # When its statements are listed as (action, resource)
    granted = {
        (action, json.dumps(stmt["Resource"], sort_keys=True))
        for name, stmt in statements(template)
        if name == "ReadApiRole"
        for action in ([stmt["Action"]] if isinstance(stmt["Action"], str) else stmt["Action"])
    }
    assert all(stmt["Effect"] == "Allow" for name, stmt in statements(template) if name == "ReadApiRole")

    # Then it reads this region's replica (an index is its own resource, table/<name>/index/<index>:
    # https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/iam-policy-specific-table-indexes.html),
    # the Redis token, decrypts with the stack key, logs to its own group, and has what Lambda needs to run in
    # a VPC and trace (https://docs.aws.amazon.com/lambda/latest/dg/configuring-vpc.html) - nothing else
    assert granted == (
        on({"Fn::Sub": TABLE}, "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query")
        | on({"Fn::Sub": TABLE + "/index/ByBranchLatest"}, "dynamodb:Query", "dynamodb:Scan")
        | on({"Ref": "RedisAuthSecret"}, "secretsmanager:GetSecretValue")
        | on({"Fn::GetAtt": ["DataKey", "Arn"]}, "kms:Decrypt")
        # issue 14: stored branch reports, and the listing that makes a missing one a 404 (test_template_reports.py)
        | on({"Fn::Sub": "${ReportsBucket.Arn}/reports/*"}, "s3:GetObject")
        | on({"Fn::GetAtt": ["ReportsBucket", "Arn"]}, "s3:ListBucket")
        | on({"Fn::GetAtt": ["ReadApiLogGroup", "Arn"]}, "logs:CreateLogStream", "logs:PutLogEvents")
        | IN_VPC_AND_TRACED
    )


def test_read_function_follows_the_house_conventions(template: dict[str, Any]) -> None:
    # Given the read function
    fn = resource(template, "ReadApiFunction")
    props = fn["Properties"]
    assert props["CodeUri"] == "functions/read_api/" and props["Handler"] == "app.lambda_handler"
    # Then it logs JSON to its own encrypted group, runs in the private subnets, and is configured with the
    # settings of the contract (docs/read-api.md, "Settings") and nothing the contract does not name
    assert props["LoggingConfig"] == {"LogGroup": {"Ref": "ReadApiLogGroup"}, "LogFormat": "JSON"}
    assert resource(template, "ReadApiLogGroup")["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert props["VpcConfig"]["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
    env = function_environment(template, "ReadApiFunction")
    assert env["POWERTOOLS_SERVICE_NAME"] == "read-api" and env["POWERTOOLS_METRICS_NAMESPACE"] == "devicepipe"
    own = {k for k in env if not k.startswith("POWERTOOLS_")}
    assert {"TABLE_NAME", "REDIS_HOST", "REDIS_PORT", "REDIS_TLS", "REDIS_AUTH_SECRET_ARN"} <= own
    assert own <= contract_names("Settings")
    # and it reserves no concurrency (issue 15): the other functions reserve at most 33 per region (when
    # ReserveConcurrency=true) and Lambda keeps 100 of the account's concurrency unreserved; the stage's
    # throttling bounds this one instead:
    # https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html
    assert "ReservedConcurrentExecutions" not in props
    reserved = sum(
        f["Properties"].get("ReservedConcurrentExecutions", {"Fn::If": ["", 0]})["Fn::If"][1]  # when reserved
        for f in resources_of(template, "AWS::Serverless::Function").values()
    )
    assert reserved <= 33
    skips = {s["id"] for s in fn["Metadata"]["checkov"]["skip"]}
    assert "CKV_AWS_115" in skips  # the written reason for checkov's reserved-concurrency check


def metric_stats(alarm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A metric-math alarm's metrics by id: namespace, name and dimensions."""
    return {q["Id"]: q["MetricStat"]["Metric"] for q in alarm["Metrics"] if "MetricStat" in q}


def expression(alarm: dict[str, Any]) -> str:
    (returned,) = [q for q in alarm["Metrics"] if q.get("ReturnData", True)]
    text: str = returned["Expression"]
    return text


def test_cache_hit_ratio_alarm_uses_the_functions_metrics_and_ignores_low_traffic(template: dict[str, Any]) -> None:
    # Given the hit-ratio alarm
    alarm = resource(template, "ReadApiCacheHitRatioAlarm")["Properties"]
    metrics = metric_stats(alarm)
    # Then it reads the counters the read function emits (docs/read-api.md, "Metrics")
    assert {m["MetricName"] for m in metrics.values()} == {"CacheHits", "CacheMisses"} <= contract_names("Metrics")
    for m in metrics.values():
        assert m["Namespace"] == "devicepipe" and m["Dimensions"] == [{"Name": "service", "Value": "read-api"}]
    # and computes the ratio only over periods with enough lookups: IF without a false value drops the data
    # point, and dropped points count as missing, which do not breach
    # (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/using-metric-math.html#using-IF-expressions,
    # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/AlarmThatSendsEmail.html)
    guard = re.fullmatch(r"IF\(\(hits \+ misses\) >= (\d+), 100 \* hits / \(hits \+ misses\)\)", expression(alarm))
    assert guard and int(guard.group(1)) >= 20
    assert alarm["Threshold"] == 85 and alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["DatapointsToAlarm"] == alarm["EvaluationPeriods"] >= 3
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


#: HTTP API metrics are named 4xx, 5xx, Count, Latency (REST APIs' 5XXError does not exist for them),
#: per API and stage with the dimensions ApiId and Stage:
#: https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-metrics.html
HTTP_API_DIMENSIONS = [{"Name": "ApiId", "Value": {"Ref": "ReadApi"}}, {"Name": "Stage", "Value": STAGE}]


def test_5xx_rate_alarm_divides_http_api_5xx_by_count_over_enough_requests(template: dict[str, Any]) -> None:
    # Given the 5xx-rate alarm
    alarm = resource(template, "ReadApi5xxRateAlarm")["Properties"]
    metrics = metric_stats(alarm)
    # Then it divides the stage's 5xx by its Count, in percent, over periods with enough requests
    assert {i: m["MetricName"] for i, m in metrics.items()} == {"errors": "5xx", "requests": "Count"}
    for m in metrics.values():
        assert m["Namespace"] == "AWS/ApiGateway" and m["Dimensions"] == HTTP_API_DIMENSIONS
    guard = re.fullmatch(r"IF\(requests >= (\d+), 100 \* errors / requests\)", expression(alarm))
    assert guard and int(guard.group(1)) >= 10
    assert alarm["Threshold"] == {"Ref": "ReadApi5xxRateThreshold"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["TreatMissingData"] == "notBreaching"
    assert alarm["DatapointsToAlarm"] >= 2


def test_p99_latency_alarm_waits_for_a_significant_sample(template: dict[str, Any]) -> None:
    # Given the latency alarm on the stage's Latency
    (alarm,) = [a for a in alarms_on(template, "Latency") if a["Dimensions"] == HTTP_API_DIMENSIONS]
    assert alarm["Namespace"] == "AWS/ApiGateway" and alarm["ExtendedStatistic"] == "p99"
    assert alarm["Threshold"] == {"Ref": "ReadApiLatencyP99ThresholdMs"}
    # Then a p99 over too few requests (under 1000 in the period) leaves the alarm as it is:
    # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/percentiles-with-low-samples.html
    assert alarm["EvaluateLowSampleCountPercentile"] == "ignore"
    assert alarm["TreatMissingData"] == "notBreaching" and alarm["DatapointsToAlarm"] >= 2


def rows(widgets: Any) -> list[list[str]]:
    """The metric rows of dashboard widgets as [namespace, name, ...], "." and "..." spelled out."""
    out: list[list[str]] = []
    for widget in widgets:
        previous: list[str] = []
        for row in widget["properties"]["metrics"]:
            names = [v for v in row if isinstance(v, str)]
            if not names:
                continue  # an expression row
            if names[0] == "...":
                names = previous
            names = [previous[i] if v == "." else v for i, v in enumerate(names)]
            out.append(previous := names)
    return out


def dashboard(template: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The dashboard body as written (a !Sub string, its own !Sub variables substituted) and as JSON once every
    ${...} is substituted."""
    sub = resource(template, "Dashboard")["Properties"]["DashboardBody"]["Fn::Sub"]
    body: str = sub[0] if isinstance(sub, list) else sub  # [string, {variable: value}] when it has variables
    for name in sub[1] if isinstance(sub, list) else {}:
        body = body.replace("${" + name + "}", "SUBSTITUTED")
    return body, json.loads(re.sub(r"\$\{[^}]+\}", "SUBSTITUTED", body))


def test_dashboard_gains_a_read_row_and_stays_valid_json(template: dict[str, Any]) -> None:
    # Given the dashboard body, parsed as CloudWatch will see it after !Sub
    raw, body = dashboard(template)
    # Then every ${} it substitutes is a resource, a parameter or a pseudo parameter
    for name in re.findall(r"\$\{([^}]+)\}", raw):
        assert name.split(".")[0] in template["Resources"] | template["Parameters"] or name.startswith("AWS::")
    # and a read-side row shows requests and errors, p50/p99 latency and the cache (hits, misses, errors,
    # the ratio as metric math), from the metrics the function emits
    read = {w["properties"]["title"]: w for w in body["widgets"] if "Read API" in w["properties"]["title"]}
    assert len(read) == 3 and {w["y"] for w in read.values()} == {max(w["y"] for w in body["widgets"])}
    shown = json.dumps([w["properties"] for w in read.values()])
    for needle in ('"Count"', '"4xx"', '"5xx"', '"Latency"', '"p50"', '"p99"', '"$default"', "100 * hits"):
        assert needle in shown, needle
    emitted = {name for row in rows(read.values()) if row[0] == "devicepipe" for name in row[1:2]}
    assert {"CacheHits", "CacheMisses", "CacheErrors", "ReadLatency"} == emitted
    assert emitted <= contract_names("Metrics")
    # and no two widgets overlap on the 24-column grid
    cells = [
        (x, y)
        for w in body["widgets"]
        for x in range(w["x"], w["x"] + w["width"])
        for y in range(w["y"], w["y"] + w["height"])
    ]
    assert len(cells) == len(set(cells))


def test_read_api_url_is_an_output_under_the_name_the_cli_looks_up(template: dict[str, Any]) -> None:
    # Given the stack's outputs
    output = template["Outputs"]["ReadApiUrl"]
    # Then ReadApiUrl is the $default stage's invoke URL, the root of the API:
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-stages.html
    assert output["Value"] == {"Fn::Sub": "https://${ReadApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/"}
    assert output["Description"]
