{{/*
The objects' name: fullnameOverride, else the chart's name. It names the
cluster-scoped ClusterRole and ClusterRoleBinding too.
*/}}
{{- define "keyhole-agent.fullname" -}}
{{- default .Chart.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object: the kustomize base's and stub register's, plus Helm's. */}}
{{- define "keyhole-agent.labels" -}}
app.kubernetes.io/name: keyhole-agent
app.kubernetes.io/part-of: keyhole
keyhole.dev/cluster: {{ include "keyhole-agent.cluster" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
{{- end -}}

{{/* The Deployment's selector: never changes after the first install. */}}
{{- define "keyhole-agent.selectorLabels" -}}
app.kubernetes.io/name: keyhole-agent
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "keyhole-agent.cluster" -}}
{{- required "cluster: the ID the cluster was registered under (stub register ID) is required: --set cluster=ID, or -f the values `stub register ID --helm-values` printed" .Values.cluster -}}
{{- end -}}

{{- define "keyhole-agent.stubURL" -}}
{{- required "stubURL: the stub's publicURL is required: --set stubURL=https://..., or -f the values `stub register ID --helm-values` printed" .Values.stubURL -}}
{{- end -}}

{{- define "keyhole-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keyhole-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: with serviceAccount.create=false, name the existing ServiceAccount the agent runs as" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "keyhole-agent.image" -}}
{{- if .Values.image.digest -}}
{{- $tag := "" -}}
{{- with .Values.image.tag -}}{{- $tag = printf ":%s" . -}}{{- end -}}
{{- printf "%s%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The Secret the pod mounts: the chart's (joinSecret) or the operator's
(existingSecret); exactly one of them.
*/}}
{{- define "keyhole-agent.secretName" -}}
{{- if and .Values.joinSecret .Values.existingSecret -}}
{{- fail "joinSecret and existingSecret are both set: give the join secret inline (joinSecret, the chart makes the Secret) or name your own Secret (existingSecret), not both" -}}
{{- else if .Values.existingSecret -}}
{{- .Values.existingSecret -}}
{{- else if .Values.joinSecret -}}
{{- include "keyhole-agent.fullname" . -}}
{{- else -}}
{{- fail "joinSecret or existingSecret is required: the join secret `stub register` printed (--set joinSecret=..., or -f the values `stub register ID --helm-values` printed), or the name of a Secret with key join-secret (--set existingSecret=NAME)" -}}
{{- end -}}
{{- end -}}

{{/* The agent's config file, agent.yaml. */}}
{{- define "keyhole-agent.config" -}}
{{- $own := dict "apiVersion" "keyhole.dev/v1alpha1" "kind" "AgentConfig" "stubURL" (include "keyhole-agent.stubURL" .) "cluster" (include "keyhole-agent.cluster" .) "joinSecretFile" "/etc/keyhole/secret/join-secret" "healthListen" ":8081" -}}
{{- if .Values.stubCA -}}
{{- if .Values.existingSecret -}}
{{- $_ := set $own "stubCAFile" "/etc/keyhole/config/stub-ca.crt" -}}
{{- else -}}
{{- $_ := set $own "stubCAFile" "/etc/keyhole/secret/stub-ca.crt" -}}
{{- end -}}
{{- end -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.config) $own) -}}
{{- end -}}
