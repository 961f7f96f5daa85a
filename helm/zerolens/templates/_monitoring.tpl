{{/*
What the monitoring and autoscaling templates share: how a release's series are told apart in Prometheus, and
the PromQL the model autoscaler runs. The metric names are those services/web/metrics.py and
services/model/metrics.py export; tests/deploy/test_monitoring.py fails when a query names any other.
*/}}

{{/*
PromQL label matchers for one tier's series. Usage: include "zerolens.metrics.selector" (dict "context" $
"component" "web"). The chart's ServiceMonitors scrape each tier through its Service, so every sample carries the
Service's namespace and name: together they name one release's tier, whatever the job label or the pods are
called, and the ServiceMonitor may live in another namespace without changing them.
*/}}
{{- define "zerolens.metrics.selector" -}}
{{- printf "namespace=%q,service=%q" .context.Release.Namespace (include (printf "zerolens.%s.fullname" .component) .context) }}
{{- end }}

{{/*
The web routes that classify a photo (the route label is the URL rule, not the path): the JSON API, the upload
form and the Open Inference Protocol's infer. Ratios of errors count these only: probes, the page and /metrics
would dilute them, and /readyz answers 503 by design while the model tier is down.
*/}}
{{- define "zerolens.metrics.classifyRoutes" -}}
/api/v1/predict|/uploader|/v2/models/.+/infer
{{- end }}

{{/*
The release's pods by name, for kube-state-metrics series (which carry the pod's name, not its Service):
a Deployment's pods are "<deployment>-<template hash>-<suffix>".
*/}}
{{- define "zerolens.metrics.podPattern" -}}
{{- printf "(%s|%s)-[a-z0-9]+-[a-z0-9]+" (include "zerolens.web.fullname" .) (include "zerolens.model.fullname" .) }}
{{- end }}

{{/*
The model autoscaler's query, run by KEDA (kind=keda). prometheus-adapter (kind=hpa) runs the same expressions
from its own rules (values.yaml, docs/monitoring.md).
- inFlight: requests admitted and not yet answered, summed over the pods; the autoscaler divides by the pod
  count (metricType AverageValue). By Little's law it grows with both request rate and time in the server.
- queueTime: p95 of the wait for a decoder and a batch over 2 minutes, one value for the tier (metricType
  Value). With no traffic the quantile is NaN; "> 0 or vector(0)" turns that into 0, so the tier shrinks to
  minReplicas instead of the autoscaler reporting an error.
*/}}
{{- define "zerolens.model.autoscaling.query" -}}
{{- $selector := include "zerolens.metrics.selector" (dict "context" . "component" "model") }}
{{- if eq .Values.model.autoscaling.metric "queueTime" }}
{{- printf "(histogram_quantile(0.95, sum by (le) (rate(zerolens_model_queue_seconds_bucket{%s}[2m]))) > 0) or vector(0)" $selector }}
{{- else }}
{{- printf "sum(zerolens_model_in_flight{%s}) or vector(0)" $selector }}
{{- end }}
{{- end }}

{{/* The autoscaler's target for the chosen signal. */}}
{{- define "zerolens.model.autoscaling.target" -}}
{{- if eq .Values.model.autoscaling.metric "queueTime" }}
{{- .Values.model.autoscaling.targetQueueTimeP95Seconds }}
{{- else }}
{{- .Values.model.autoscaling.targetInFlightPerPod }}
{{- end }}
{{- end }}

{{/*
How the autoscaler compares the signal with the target: in flight is a sum over pods, so per pod
(AverageValue); queue time is already one value for the whole tier (Value).
*/}}
{{- define "zerolens.model.autoscaling.metricType" -}}
{{- ternary "Value" "AverageValue" (eq .Values.model.autoscaling.metric "queueTime") }}
{{- end }}
