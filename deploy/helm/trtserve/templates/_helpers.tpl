{{- define "trtserve.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trtserve.labels" -}}
app.kubernetes.io/name: trtserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "trtserve.selectorLabels" -}}
app.kubernetes.io/name: trtserve
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trtserve.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if and .Values.gpu.enabled (not .Values.image.tag) -}}
{{- $tag = printf "%s-gpu" $tag -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
