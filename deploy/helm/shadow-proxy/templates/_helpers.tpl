{{/* Names and labels ------------------------------------------------------------------------ */}}

{{- define "shadow-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shadow-proxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "shadow-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shadow-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shadow-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shadow-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "shadow-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shadow-proxy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "shadow-proxy.adminSecretName" -}}
{{- default (include "shadow-proxy.fullname" .) .Values.adminToken.existingSecret -}}
{{- end -}}

{{/* The proxy's config ------------------------------------------------------------------------ */}}

{{/* config.yaml as rendered into the ConfigMap: .Values.config with store.url from redis.url. */}}
{{- define "shadow-proxy.configYaml" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.redis.url -}}
{{- $store := deepCopy (default (dict) (get $config "store")) -}}
{{- $_ := set $store "url" .Values.redis.url -}}
{{- $_ := set $config "store" $store -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "shadow-proxy.listenPort" -}}
{{- dig "listen" "port" 8080 .Values.config | int -}}
{{- end -}}

{{- define "shadow-proxy.adminPort" -}}
{{- dig "admin" "port" 9901 .Values.config | int -}}
{{- end -}}

{{/* A duration as the proxy reads it (250ms, 20s, 10m, 1h, 1d) in seconds. */}}
{{- define "shadow-proxy.seconds" -}}
{{- $text := toString . | trim -}}
{{- $pattern := "^([0-9]+(?:\\.[0-9]+)?)\\s*(ms|s|m|h|d)$" -}}
{{- if not (regexMatch $pattern $text) -}}
{{- fail (printf "config.shutdown: %q is not a duration (use 250ms, 30s, 10m, 1h)" $text) -}}
{{- end -}}
{{- $number := regexReplaceAll $pattern $text "${1}" | float64 -}}
{{- $factor := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0) (regexReplaceAll $pattern $text "${2}") -}}
{{- mulf $number $factor -}}
{{- end -}}

{{/* Refuse values that would deploy a broken proxy. */}}
{{- define "shadow-proxy.validate" -}}
{{- $shutdown := default (dict) (get .Values.config "shutdown") -}}
{{- $grace := include "shadow-proxy.seconds" (default "20s" (get $shutdown "grace")) | float64 -}}
{{- $mirror := include "shadow-proxy.seconds" (default "5s" (get $shutdown "mirror_grace")) | float64 -}}
{{- $needed := addf .Values.preStopSleepSeconds $grace $mirror -}}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + config.shutdown.grace + config.shutdown.mirror_grace (%v seconds), or SIGKILL cuts the drain and the audit seal" .Values.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- $store := .Values.redis.url | default (dig "store" "url" "memory://" .Values.config) -}}
{{- $many := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) (gt (int .Values.workers) 1) -}}
{{- if and $many (hasPrefix "memory://" $store) (not .Values.redis.urlSecret.name) -}}
{{- fail "more than one replica or worker needs a shared store: set redis.url (or redis.urlSecret), or replicaCount: 1 and workers: 1" -}}
{{- end -}}
{{- if and .Values.outcomesToken.existingSecret (not (dig "admin" "outcomes_token_env" "" .Values.config)) -}}
{{- fail "outcomesToken.existingSecret needs config.admin.outcomes_token_env (the variable the proxy reads it from)" -}}
{{- end -}}
{{- $service := default (include "shadow-proxy.fullname" .) .Values.service.nameOverride -}}
{{- $upstreams := list (dig "default_upstream" "" .Values.config) -}}
{{- range (default (list) (get .Values.config "routes")) -}}
{{- $upstreams = append $upstreams (dig "primary" "url" "" .) -}}
{{- end -}}
{{- range (compact $upstreams) -}}
{{- $host := (urlParse .).hostname | default "" -}}
{{- if or (eq $host $service) (hasPrefix (printf "%s.%s." $service $.Release.Namespace) $host) -}}
{{- fail (printf "%s points at this chart's own Service %q: the proxy would forward to itself (rename the decision service's Service and point the primary at it)" . $service) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.service.admin.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs service.admin.enabled (the ServiceMonitor scrapes that Service)" -}}
{{- end -}}
{{- end -}}
