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
Images: <registry>/<repository>:<tag>. The defaults are what .github/workflows/release.yaml publishes for each
release: ghcr.io/zerolens/zerolens-web:<appVersion> and ghcr.io/zerolens/zerolens-model:<appVersion>-cpu or
-gpu. The web tag defaults to the chart's appVersion. The model server has two builds of each release:
"<appVersion>-cpu" (tensorflow-cpu + TFLite) and "<appVersion>-gpu" (TensorFlow with CUDA); the default follows
model.gpu.enabled, and an explicit model.image.tag wins.
The repository is used as it is when the registry is empty (local builds: zerolens/web:dev loaded into kind) or
when it starts with a registry host, read as Docker reads an image name (a first component holding "." or ":",
or "localhost"), so that --set web.image.repository=registry.example.com/team/web names a mirror.
Usage: include "zerolens.image" (dict "image" .Values.web.image "tag" "<tag>").
*/}}
{{- define "zerolens.image" -}}
{{- $repository := .image.repository }}
{{- $first := first (splitList "/" $repository) }}
{{- $hasHost := and (contains "/" $repository) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- if and .image.registry (not $hasHost) }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .image.registry) $repository }}
{{- end }}
{{- printf "%s:%s" $repository .tag }}
{{- end }}

{{- define "zerolens.web.image" -}}
{{- include "zerolens.image" (dict "image" .Values.web.image "tag" (.Values.web.image.tag | default .Chart.AppVersion)) }}
{{- end }}

{{- define "zerolens.model.image" -}}
{{- $variant := ternary "gpu" "cpu" .Values.model.gpu.enabled }}
{{- include "zerolens.image" (dict "image" .Values.model.image "tag" (.Values.model.image.tag | default (printf "%s-%s" .Chart.AppVersion $variant))) }}
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

{{/*
CurveZMQ keys (curve.*). Both tiers mount one Secret read-only at the same path, given to them as curve_keys_dir;
the web pods may mount a Secret of their own (curve.webExistingSecret). services/keys.py reads it: server.secret
(the model server's key), client.secret (the web tier's), every client*.secret and client*.public (admitted).
*/}}
{{- define "zerolens.curve.mountPath" -}}
/etc/zerolens-curve
{{- end }}

{{- define "zerolens.curve.secretName" -}}
{{- .Values.curve.existingSecret | default (printf "%s-curve" (include "zerolens.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end }}

{{- define "zerolens.curve.webSecretName" -}}
{{- .Values.curve.webExistingSecret | default (include "zerolens.curve.secretName" .) }}
{{- end }}

{{/*
The data of the generated Secret: on `helm upgrade`, the release's existing Secret's (keys never change under
running pods, and keys added to it by hand, e.g. a client-next.secret during a rotation, stay); on install, two
new secret keys. Helm cannot compute X25519 public keys, but any 40 alphanumeric characters are a valid Z85 secret
key (~238 bits), so the chart writes secret keys only and both tiers derive the public keys. Memoised in
.Values.curve for the rest of this render: randAlphaNum gives new keys on every call, and the Secret and the
pods' checksum must see the same ones. Where lookup sees no cluster (helm template, --dry-run), the keys are new
each time.
*/}}
{{- define "zerolens.curve.data" -}}
{{- if not (hasKey .Values.curve "_data") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "zerolens.curve.secretName" .) }}
{{- $found := dig "data" dict ($existing | default dict) }}
{{- $data := dict "server.secret" (randAlphaNum 40 | b64enc) "client.secret" (randAlphaNum 40 | b64enc) }}
{{- if and (hasKey $found "server.secret") (hasKey $found "client.secret") }}
{{- $data = $found }}
{{- end }}
{{- $_ := set .Values.curve "_data" $data }}
{{- end }}
{{- toYaml (index .Values.curve "_data") }}
{{- end }}

{{/*
checksum/curve: rolls a tier's pods when its keys change (the processes read them at start). Usage: include
"zerolens.curve.checksum" (dict "context" $ "secret" <name>). A Secret of the user's is looked up (empty where
there is no cluster, so that helm template stays deterministic); the generated one hashes its memoised data.
*/}}
{{- define "zerolens.curve.checksum" -}}
{{- $ctx := .context }}
{{- if $ctx.Values.curve.existingSecret }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace .secret | default dict }}
{{- printf "%s:%s" .secret (dig "data" dict $existing | toJson) | sha256sum }}
{{- else }}
{{- include "zerolens.curve.data" $ctx | sha256sum }}
{{- end }}
{{- end }}
