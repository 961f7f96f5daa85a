{{/*
Names, labels and the small values every template shares. The cross-field checks live in _validate.tpl.
*/}}

{{/*
The chart name, overridable with nameOverride.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
*/}}
{{- define "zerolens.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified app name: the release name, plus the chart name unless the release name already holds it
(release "zerolens" gives "zerolens", release "prod" gives "prod-zerolens").
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
*/}}
{{- define "zerolens.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Per-component names: "<fullname>-web" and "<fullname>-model". The suffix is added before truncating, so a long
release name is cut rather than the suffix, and the result is still a valid DNS label (Services need one).
*/}}
{{- define "zerolens.web.fullname" -}}
{{- printf "%s-web" (include "zerolens.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zerolens.model.fullname" -}}
{{- printf "%s-model" (include "zerolens.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version, as used by the helm.sh/chart label ("+" is not allowed in label values).
*/}}
{{- define "zerolens.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels, for metadata. Usage: include "zerolens.labels" (dict "context" $ "component" "web").
They include the selector labels plus labels that change between releases (chart and app version): those must
never be in a selector.
*/}}
{{- define "zerolens.labels" -}}
helm.sh/chart: {{ include "zerolens.chart" .context }}
{{ include "zerolens.selectorLabels" . }}
{{- with .context.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/part-of: zerolens
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
{{- end }}

{{/*
Selector labels: the smaller, stable set. A Deployment's spec.selector cannot change after install, so this set
holds only what identifies the pods for good: app name, release, and the component (web or model), which keeps
the web Service from selecting model pods and the other way round.
*/}}
{{- define "zerolens.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zerolens.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount both tiers run as.
*/}}
{{- define "zerolens.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zerolens.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Images. The web tag defaults to the chart's appVersion. The model server has two builds of each release:
"<appVersion>-cpu" (tensorflow-cpu + TFLite) and "<appVersion>-gpu" (TensorFlow with CUDA); the default follows
model.gpu.enabled, and an explicit model.image.tag wins.
*/}}
{{- define "zerolens.web.image" -}}
{{- printf "%s:%s" .Values.web.image.repository (.Values.web.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "zerolens.model.image" -}}
{{- $variant := ternary "gpu" "cpu" .Values.model.gpu.enabled }}
{{- printf "%s:%s" .Values.model.image.repository (.Values.model.image.tag | default (printf "%s-%s" .Chart.AppVersion $variant)) }}
{{- end }}

{{/*
Where the web tier finds the model servers: the headless Service's fully qualified name. A headless Service name
resolves to one A record per ready model pod; the web client connects to every address and re-resolves every
web.modelClient.resolveIntervalSeconds to follow pods coming and going (libzmq itself would use only the first).
*/}}
{{- define "zerolens.model.address" -}}
{{- printf "%s.%s.svc.%s:%d" (include "zerolens.model.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.model.ports.zmq) }}
{{- end }}

{{/*
Pod termination. Kubernetes counts the preStop hook inside terminationGracePeriodSeconds, so the grace period is
preStop sleep + the time the process needs to stop + a margin before SIGKILL.
The model server drains for model.drainTimeoutSeconds (drain_timeout_s). gunicorn waits graceful_timeout =
max(30, request timeout + 5) s for requests in flight (services/web/gunicorn.conf.py).
*/}}
{{- define "zerolens.model.terminationGracePeriodSeconds" -}}
{{- add (int .Values.model.preStopSleepSeconds) (ceil .Values.model.drainTimeoutSeconds | int) 5 }}
{{- end }}

{{- define "zerolens.web.terminationGracePeriodSeconds" -}}
{{- $graceful := max 30 (add (div (int .Values.web.modelClient.requestTimeoutMs) 1000) 5) }}
{{- add (int .Values.web.preStopSleepSeconds) $graceful 5 }}
{{- end }}

{{/*
ingress-nginx's body-size limit, from limits.maxUploadBytes rounded up to MiB plus one MiB: nginx must let a
maximal upload (and the multipart framing around it) through, so that an oversized one is refused by the web
tier with its JSON 413 and a message, not by nginx with an HTML page. nginx's own default is only 1m.
*/}}
{{- define "zerolens.ingress.proxyBodySize" -}}
{{- $mib := 1048576 }}
{{- printf "%dm" (add1 (div (add (int64 .Values.limits.maxUploadBytes) (sub $mib 1)) $mib)) }}
{{- end }}
