{{/*
Cross-field checks, Bitnami style: values.schema.json checks each value's type and range on its own; the rules
here check combinations. Each rule is a small named template that prints one message naming the keys and the fix
(with a --set example), or nothing. zerolens.validateValues joins the messages and fails once, so a user sees
every problem in one go. NOTES.txt calls it: helm install, upgrade and template render NOTES.txt, so each of
them fails on a bad combination (helm lint does not render it).
*/}}
{{- define "zerolens.validateValues" -}}
{{- $messages := list -}}
{{- $messages = append $messages (include "zerolens.validateValues.gpuRuntime" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.gpuImageTag" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.attemptTimeout" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.autoscalingRange" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.batchDelay" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.curveWebSecret" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.modelAutoscalingRange" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.modelAutoscalingKeda" .) -}}
{{- $messages = append $messages (include "zerolens.validateValues.monitoringNeedsServiceMonitor" .) -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

{{/* The TFLite runtime runs on the CPU only: a GPU is used by the Keras/TensorFlow runtime alone. */}}
{{- define "zerolens.validateValues.gpuRuntime" -}}
{{- if and .Values.model.gpu.enabled (ne .Values.model.runtime "keras") -}}
zerolens: model.gpu.enabled
    model.gpu.enabled requires model.runtime=keras (the TFLite runtime is CPU-only; got
    model.runtime={{ .Values.model.runtime }}). Use: --set model.runtime=keras
{{- end -}}
{{- end -}}

{{/* The "-cpu" image has tensorflow-cpu: on a GPU node it would hold the GPU and never use it. */}}
{{- define "zerolens.validateValues.gpuImageTag" -}}
{{- if and .Values.model.gpu.enabled (hasSuffix "-cpu" (toString .Values.model.image.tag)) -}}
zerolens: model.image.tag
    model.image.tag={{ .Values.model.image.tag }} is a CPU build but model.gpu.enabled=true. Use the
    GPU build (--set model.image.tag={{ trimSuffix "-cpu" (toString .Values.model.image.tag) }}-gpu), or leave the tag
    empty to follow model.gpu.enabled.
{{- end -}}
{{- end -}}

{{/* services/config.py refuses this at start; refuse it at install instead of in a crash loop. */}}
{{- define "zerolens.validateValues.attemptTimeout" -}}
{{- $client := .Values.web.modelClient -}}
{{- if gt (int $client.attemptTimeoutMs) (int $client.requestTimeoutMs) -}}
zerolens: web.modelClient.attemptTimeoutMs
    web.modelClient.attemptTimeoutMs ({{ $client.attemptTimeoutMs }}) must not exceed
    web.modelClient.requestTimeoutMs ({{ $client.requestTimeoutMs }}): one try cannot outlast the whole request.
    Use: --set web.modelClient.attemptTimeoutMs={{ $client.requestTimeoutMs }}
{{- end -}}
{{- end -}}

{{- define "zerolens.validateValues.autoscalingRange" -}}
{{- $hpa := .Values.web.autoscaling -}}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) -}}
zerolens: web.autoscaling
    web.autoscaling.minReplicas ({{ $hpa.minReplicas }}) must not exceed web.autoscaling.maxReplicas
    ({{ $hpa.maxReplicas }}). Use: --set web.autoscaling.maxReplicas={{ $hpa.minReplicas }}
{{- end -}}
{{- end -}}

{{/* A batch waits at most this long for company; more than a request's whole deadline makes no sense. */}}
{{- define "zerolens.validateValues.batchDelay" -}}
{{- if ge (float64 .Values.model.batching.maxBatchDelayMs) (float64 .Values.web.modelClient.attemptTimeoutMs) -}}
zerolens: model.batching.maxBatchDelayMs
    model.batching.maxBatchDelayMs ({{ .Values.model.batching.maxBatchDelayMs }}) must be shorter than
    web.modelClient.attemptTimeoutMs ({{ .Values.web.modelClient.attemptTimeoutMs }}), or every try times out
    waiting for a batch to fill. Use: --set model.batching.maxBatchDelayMs=2
{{- end -}}
{{- end -}}

{{/* The model pods mount curve.existingSecret or the generated keys; a web Secret of its own cannot match the
latter (the chart's keys exist only in its own Secret). */}}
{{- define "zerolens.validateValues.curveWebSecret" -}}
{{- if and .Values.curve.enabled .Values.curve.webExistingSecret (not .Values.curve.existingSecret) -}}
zerolens: curve.webExistingSecret
    curve.webExistingSecret ({{ .Values.curve.webExistingSecret }}) needs curve.existingSecret: the web tier's
    keys must match the model servers', and the chart generates those only into its own Secret. Use:
    --set curve.existingSecret=<Secret with server.secret and the client keys>
{{- end -}}
{{- end -}}

{{- define "zerolens.validateValues.modelAutoscalingRange" -}}
{{- $scaling := .Values.model.autoscaling -}}
{{- if and $scaling.enabled (gt (int $scaling.minReplicas) (int $scaling.maxReplicas)) -}}
zerolens: model.autoscaling
    model.autoscaling.minReplicas ({{ $scaling.minReplicas }}) must not exceed model.autoscaling.maxReplicas
    ({{ $scaling.maxReplicas }}). Use: --set model.autoscaling.maxReplicas={{ $scaling.minReplicas }}
{{- end -}}
{{- end -}}

{{/* KEDA needs to know which Prometheus to ask; there is no address that fits every cluster. */}}
{{- define "zerolens.validateValues.modelAutoscalingKeda" -}}
{{- $scaling := .Values.model.autoscaling -}}
{{- if and $scaling.enabled (eq $scaling.kind "keda") (not $scaling.keda.serverAddress) -}}
zerolens: model.autoscaling.keda.serverAddress
    model.autoscaling.kind=keda needs the Prometheus that KEDA queries. Use:
    --set model.autoscaling.keda.serverAddress=http://prometheus-operated.monitoring.svc:9090
    (or --set model.autoscaling.kind=hpa with prometheus-adapter)
{{- end -}}
{{- end -}}

{{/* The alerts and the autoscaler's query select series by the namespace and Service labels that the chart's
ServiceMonitors give them; without those the alerts would never fire and the autoscaler would see nothing. */}}
{{- define "zerolens.validateValues.monitoringNeedsServiceMonitor" -}}
{{- if not .Values.metrics.serviceMonitor.enabled -}}
{{- $needs := list -}}
{{- if .Values.metrics.prometheusRule.enabled }}{{ $needs = append $needs "metrics.prometheusRule.enabled" }}{{ end -}}
{{- if .Values.model.autoscaling.enabled }}{{ $needs = append $needs "model.autoscaling.enabled" }}{{ end -}}
{{- if $needs -}}
zerolens: metrics.serviceMonitor.enabled
    {{ join " and " $needs }}: the alerts and the model autoscaler read the series that the chart's
    ServiceMonitors scrape (they select them by namespace and Service name), and would see none without them.
    Use: --set metrics.serviceMonitor.enabled=true
{{- end -}}
{{- end -}}
{{- end -}}
