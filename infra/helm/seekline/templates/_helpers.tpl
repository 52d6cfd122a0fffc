{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "seekline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "seekline.fullname" -}}
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

{{- define "seekline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "seekline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seekline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "seekline.labels" -}}
helm.sh/chart: {{ include "seekline.chart" . }}
{{ include "seekline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "seekline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "seekline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "seekline.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* `--config PRESET --set k=v ...` for the seekline CLI. */}}
{{- define "seekline.configArgs" -}}
- --config
- {{ .Values.config.preset | quote }}
{{- range .Values.config.overrides }}
- --set
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Environment of the seekline CLI containers: where KFP is, and its token if any. */}}
{{- define "seekline.env" -}}
- name: KFP_HOST
  value: {{ .Values.kfp.host | quote }}
{{- if .Values.kfp.tokenSecret.name }}
- name: KFP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kfp.tokenSecret.name }}
      key: {{ .Values.kfp.tokenSecret.key }}
{{- end }}
- name: HOME
  value: /tmp
{{- end }}

{{/* Labels of the serving pods; `component` keeps them apart from the register/retrain Jobs. */}}
{{- define "seekline.servingSelectorLabels" -}}
{{ include "seekline.selectorLabels" . }}
app.kubernetes.io/component: serving
{{- end }}

{{- define "seekline.servingName" -}}
{{- printf "%s-serving" (include "seekline.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
