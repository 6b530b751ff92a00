{{/*
The objects' name: fullnameOverride, else the chart's name. The stub's own
Leases and state Secret have fixed names, so one release per namespace.
*/}}
{{- define "keyhole-stub.fullname" -}}
{{- default .Chart.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object: the kustomize base's, plus Helm's. */}}
{{- define "keyhole-stub.labels" -}}
app.kubernetes.io/name: keyhole-stub
app.kubernetes.io/part-of: keyhole
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
{{- end -}}

{{/* The Deployment's selector: never changes after the first install. */}}
{{- define "keyhole-stub.selectorLabels" -}}
app.kubernetes.io/name: keyhole-stub
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "keyhole-stub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keyhole-stub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: with serviceAccount.create=false, name the existing ServiceAccount the stub runs as" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "keyhole-stub.image" -}}
{{- if .Values.image.digest -}}
{{- $tag := "" -}}
{{- with .Values.image.tag -}}{{- $tag = printf ":%s" . -}}{{- end -}}
{{- printf "%s%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The port of a host:port listen address, e.g. ":8443" -> 8443. */}}
{{- define "keyhole-stub.port" -}}
{{- $p := regexFind "[0-9]+$" . -}}
{{- if not $p -}}
{{- fail (printf "config: listen address %q has no port" .) -}}
{{- end -}}
{{- $p -}}
{{- end -}}
