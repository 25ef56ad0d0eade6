{
  "targets": [
    {
      "target_name": "duat",
      "sources": [
        "<!@(node -p \"const s=require('./native/sources.json');s.core.concat(s.bindings, s.cuda_stubs).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fno-math-errno", "-fopenmp-simd"],
      "ldflags": ["-pthread"],
      "libraries": ["-ldl"]
    }
  ]
}
