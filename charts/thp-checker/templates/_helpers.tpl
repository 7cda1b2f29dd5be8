{{/*
Names, labels and the values every template shares.
*/}}

{{- define "thp-checker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: <release>-thp-checker, or <release> when it already contains the
chart name; fullnameOverride wins. Truncated so that "<fullname>-<suffix>" stays a valid name.
*/}}
{{- define "thp-checker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "thp-checker.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thp-checker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name and instance only (plus a component where one is given). */}}
{{- define "thp-checker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "thp-checker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "thp-checker.labels" -}}
helm.sh/chart: {{ include "thp-checker.chart" . }}
{{ include "thp-checker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: thp-checker
{{- end }}

{{/* Component labels: include with (dict "root" $ "component" "operator"). */}}
{{- define "thp-checker.componentLabels" -}}
{{ include "thp-checker.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "thp-checker.componentSelectorLabels" -}}
{{ include "thp-checker.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "thp-checker.operatorName" -}}
{{- printf "%s-operator" (include "thp-checker.fullname" .) }}
{{- end }}

{{- define "thp-checker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "thp-checker.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "thp-checker.cleanupName" -}}
{{- printf "%s-cleanup" (include "thp-checker.fullname" .) }}
{{- end }}

{{/* The agent pods' PriorityClass: agent.priorityClassName, else the chart's own class. */}}
{{- define "thp-checker.agentPriorityClass" -}}
{{- if .Values.agent.priorityClassName }}
{{- .Values.agent.priorityClassName }}
{{- else if .Values.agent.priorityClass.create }}
{{- printf "%s-agent" (include "thp-checker.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The operator's image: image.repository@image.digest when a digest is set, else
image.repository:image.tag (default: the chart's appVersion).
*/}}
{{- define "thp-checker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The agent and mitigation pods' image; each field falls back to image.*. A digest wins over a
tag; image.digest applies only while agent.image sets neither repository nor tag (it pins the
operator's image, not another one).
*/}}
{{- define "thp-checker.agentImage" -}}
{{- $agent := .Values.agent.image }}
{{- $repository := default .Values.image.repository $agent.repository }}
{{- $digest := $agent.digest }}
{{- if and (not $digest) (not $agent.repository) (not $agent.tag) }}
{{- $digest = .Values.image.digest }}
{{- end }}
{{- if $digest }}
{{- printf "%s@%s" $repository $digest }}
{{- else }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $agent.tag }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* imagePullSecrets' names, comma-separated (THPCHECK_AGENT_PULL_SECRETS). */}}
{{- define "thp-checker.pullSecretNames" -}}
{{- $names := list }}
{{- range .Values.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{- define "thp-checker.agentPullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.agent.image.pullPolicy }}
{{- end }}

{{/*
Security context of the operator's and the clean-up hook's containers: non-root (the image's
uid 65532), read-only root filesystem, no capabilities, no privilege escalation, RuntimeDefault
seccomp.
*/}}
{{/*
The operator's environment: one entry per row of its settings table
(operator/thpcheck/controller/settings.py TABLE), variable -> value, and nothing else; the
Deployment renders its env list from this one dict (tests/chart/test_render.py compares the
rendered names with the table both ways, for every value set). Each operator.tuning key is the
variable of the same name (statusInterval: THPCHECK_STATUS_INTERVAL), so a new tuning setting
needs no line here; any other setting: one line below.
*/}}
{{- define "thp-checker.operatorEnv" -}}
{{- $env := dict
  "THPCHECK_NAMESPACE" (include "thp-checker.namespace" .)
  "THPCHECK_AGENT_IMAGE" (include "thp-checker.agentImage" .)
  "THPCHECK_AGENT_PULL_POLICY" (include "thp-checker.agentPullPolicy" .)
  "THPCHECK_AGENT_PULL_SECRETS" (include "thp-checker.pullSecretNames" .)
  "THPCHECK_PRIORITY_CLASS" (include "thp-checker.agentPriorityClass" .)
  "THPCHECK_MITIGATION_PRIORITY_CLASS" .Values.agent.mitigationPriorityClassName
  "THPCHECK_MITIGATION_STATE_DIR" .Values.agent.mitigationStateDir
  "THPCHECK_METRICS_PORT" .Values.metrics.port
  "THPCHECK_HEALTH_PORT" .Values.operator.healthPort
  "THPCHECK_LEADER_ELECTION" .Values.operator.leaderElection.enabled
  "THPCHECK_LEASE_NAME" (include "thp-checker.operatorName" .)
  "THPCHECK_LEASE_DURATION" .Values.operator.leaderElection.leaseDurationSeconds
  "THPCHECK_CLUSTER_MAX_CORDONED" .Values.remediation.clusterMaxCordoned
  "THPCHECK_MAX_UNHEALTHY" .Values.remediation.maxUnhealthy
-}}
{{- range $key, $value := .Values.operator.tuning }}
{{- $_ := set $env (printf "THPCHECK_%s" (snakecase $key | upper)) $value }}
{{- end }}
{{- range $name, $value := $env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{- define "thp-checker.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "thp-checker.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Remediation guards, checked on every render.
1. With remediation.enabled false the operator may not write nodes, so the default ThpCheck
   must not ask it to cordon or mitigate (it is rendered report-only: label false).
2. Turning remediation off while nodes still carry the operator's marks would strand them: the
   operator could no longer remove its labels, annotations and cordons. On install and upgrade
   (not `helm template`, where lookup sees no cluster) the chart refuses while any node carries
   a thpcheck.io/labelled-by, cordoned-by, mitigate-by or tainted-by annotation; and, likewise,
   turning remediation.condition off while any node carries thpcheck.io/condition-by (the
   operator could no longer remove its ThpDataLoss condition).
3. The mitigation's state directory is its own: never one of the default ThpCheck's paths
   (the agent writes its scratch files there; the mitigation refuses such a directory).
*/}}
{{- define "thp-checker.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled=true (two operators would act on the same nodes)" }}
{{- end }}
{{- $state := .Values.agent.mitigationStateDir }}
{{- range .Values.defaultCheck.paths }}
{{- if or (eq . $state) (hasPrefix (printf "%s/" $state) .) (hasPrefix (printf "%s/" (trimSuffix "/" .)) $state) }}
{{- fail (printf "agent.mitigationStateDir %s overlaps defaultCheck.paths entry %s: the mitigation's state directory must be its own (the agent writes scratch files in its paths)" $state .) }}
{{- end }}
{{- end }}
{{- if and .Values.defaultCheck.enabled .Values.defaultCheck.remediation.condition (not (and .Values.remediation.enabled .Values.remediation.condition)) }}
{{- fail "defaultCheck.remediation.condition needs remediation.enabled=true and remediation.condition=true (the nodes/status permission)" }}
{{- end }}
{{- if and .Values.remediation.condition (not .Values.remediation.enabled) }}
{{- fail "remediation.condition needs remediation.enabled=true (the condition's owner annotation is a Node patch)" }}
{{- end }}
{{- if not (and .Values.remediation.enabled .Values.remediation.condition) }}
{{- $conditioned := list }}
{{- range (lookup "v1" "Node" "" "").items | default list }}
{{- if hasKey (.metadata.annotations | default dict) "thpcheck.io/condition-by" }}
{{- $conditioned = append $conditioned .metadata.name }}
{{- end }}
{{- end }}
{{- if $conditioned }}
{{- fail (printf "without remediation.condition the operator could not remove its ThpDataLoss condition from %d node(s) (%s). First set condition to false in every ThpCheck, wait until no node has a thpcheck.io/condition-by annotation, then drop remediation.condition (docs/remediation.md)" (len $conditioned) (join ", " (slice $conditioned 0 (min 5 (len $conditioned))))) }}
{{- end }}
{{- end }}
{{- if not .Values.remediation.enabled }}
{{- if and .Values.defaultCheck.enabled (or .Values.defaultCheck.remediation.cordon .Values.defaultCheck.remediation.mitigate .Values.defaultCheck.remediation.taint) }}
{{- fail "defaultCheck.remediation.cordon/mitigate/taint need remediation.enabled=true (the operator may not write nodes otherwise)" }}
{{- end }}
{{- $marked := list }}
{{- range (lookup "v1" "Node" "" "").items | default list }}
{{- $annotations := .metadata.annotations | default dict }}
{{- if or (hasKey $annotations "thpcheck.io/labelled-by") (hasKey $annotations "thpcheck.io/cordoned-by") (hasKey $annotations "thpcheck.io/mitigate-by") (hasKey $annotations "thpcheck.io/tainted-by") }}
{{- $marked = append $marked .metadata.name }}
{{- end }}
{{- end }}
{{- if $marked }}
{{- fail (printf "remediation.enabled=false would leave the operator unable to undo its marks on %d node(s) (%s). First set label, cordon and mitigate to false in every ThpCheck (defaultCheck.remediation.label=false), wait until no node has a thpcheck.io/labelled-by, cordoned-by or mitigate-by annotation, then disable remediation (docs/helm.md)" (len $marked) (join ", " (slice $marked 0 (min 5 (len $marked))))) }}
{{- end }}
{{- end }}
{{- end }}
