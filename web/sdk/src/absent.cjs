// Stands in for optional modules protobufjs looks for (`long`, and `@protobufjs/inquire`,
// which calls `eval("require")`: a page's Content-Security-Policy forbids that). The SDK
// uses plain numbers for 64-bit fields, so neither is needed in a bundle.
module.exports = function absent() {
  return null;
};
