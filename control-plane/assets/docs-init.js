// Starts Swagger UI on the control plane's own OpenAPI document. `validatorUrl: null`: the
// default would send the document to validator.swagger.io (and fail on an air-gapped cluster).
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
